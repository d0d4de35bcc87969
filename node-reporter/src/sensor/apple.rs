//! Apple Silicon Macs: thermal pressure from the notify(3) key
//! `com.apple.system.thermalpressurelevel` (falling back to `NSProcessInfo.thermalState`),
//! power without sudo from the IOReport "Energy Model" channels.
//!
//! UNTESTED ON LINUX, where the project is built and tested: the FFI below compiles only for
//! `target_os = "macos"` and has been type-checked against the aarch64-apple-darwin target
//! but never run. IOReport is a private Apple library; its signatures here follow the
//! declarations that open-source tools (macmon, asitop, socpowerbud) have used for years.
//! What can be tested anywhere is tested here: the unit conversion and the choice of
//! channels, and the pressure mapping in `crate::sensor::thermal`.
//!
//! Not read on macOS: temperature (needs the SMC or HID sensors) and utilization; both stay
//! unknown.

use futures::future::BoxFuture;
use wes_proto::SensorKind;

use super::{Reading, Sensor};

/// An IOReport energy value in its channel's own unit, as joules. Units differ per channel
/// (GPU in nJ while CPU is in mJ on some chips), so an unknown unit is refused, never
/// guessed.
pub fn energy_to_joules(value: i64, unit: &str) -> Option<f64> {
    let scale = match unit.trim() {
        "J" => 1.0,
        "mJ" => 1e-3,
        "uJ" | "µJ" => 1e-6,
        "nJ" => 1e-9,
        _ => return None,
    };
    (value >= 0).then_some(value as f64 * scale)
}

/// Whether an "Energy Model" channel is one of the SoC rails whose sum is the package power.
/// The group also holds per-core and per-cluster channels that are already inside
/// "CPU Energy"; summing everything would count the CPU two or three times. Ultra chips
/// prefix the rails per die (`DIE_0_CPU Energy`), and ANE/DRAM channels may be numbered.
pub fn counts_toward_total(channel: &str) -> bool {
    channel.ends_with("CPU Energy")
        || channel.ends_with("GPU Energy")
        || channel.starts_with("ANE")
        || channel.starts_with("DRAM")
        || channel.starts_with("GPU SRAM")
}

/// The sum over the counted rails of one IOReport delta, from `(channel, value, unit)`.
pub fn total_joules<'a>(
    channels: impl IntoIterator<Item = (&'a str, i64, &'a str)>,
) -> Result<f64, String> {
    let mut total = 0.0;
    let mut counted = 0;
    for (name, value, unit) in channels {
        if !counts_toward_total(name) {
            continue;
        }
        total += energy_to_joules(value, unit).ok_or_else(|| {
            format!("IOReport channel {name:?}: unusable energy value {value} {unit:?}")
        })?;
        counted += 1;
    }
    if counted == 0 {
        return Err("IOReport \"Energy Model\" has no CPU/GPU/ANE/DRAM channel".to_string());
    }
    Ok(total)
}

pub struct AppleSensor {
    #[cfg(target_os = "macos")]
    inner: macos::Inner,
    #[cfg(not(target_os = "macos"))]
    _unconstructible: std::convert::Infallible,
}

impl AppleSensor {
    #[cfg(not(target_os = "macos"))]
    pub fn open() -> Result<Self, String> {
        Err("the apple sensor works only on macOS".to_string())
    }

    /// Succeeds whenever the thermal state can be read; power may still be unknown (an Intel
    /// Mac or a virtual machine has no "Energy Model" channels), and each reading says why.
    #[cfg(target_os = "macos")]
    pub fn open() -> Result<Self, String> {
        macos::Inner::open().map(|inner| AppleSensor { inner })
    }
}

impl Sensor for AppleSensor {
    fn kind(&self) -> SensorKind {
        SensorKind::Apple
    }

    #[cfg(target_os = "macos")]
    fn read(&mut self) -> BoxFuture<'_, Reading> {
        let reading = self.inner.read();
        Box::pin(async move { reading })
    }

    #[cfg(not(target_os = "macos"))]
    fn read(&mut self) -> BoxFuture<'_, Reading> {
        let never: std::convert::Infallible = self._unconstructible;
        match never {}
    }
}

#[cfg(target_os = "macos")]
mod macos {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::ptr;
    use std::time::Instant;

    use core_foundation::array::{CFArrayGetCount, CFArrayGetValueAtIndex, CFArrayRef};
    use core_foundation::base::{CFRelease, CFTypeRef, TCFType};
    use core_foundation::dictionary::{
        CFDictionaryGetValue, CFDictionaryRef, CFMutableDictionaryRef,
    };
    use core_foundation::string::{CFString, CFStringRef};
    use wes_proto::ThermalState;

    use super::total_joules;
    use crate::sensor::Reading;
    use crate::sensor::thermal::{apple_pressure_state, apple_process_info_state};

    const NOTIFY_STATUS_OK: u32 = 0;
    const PRESSURE_KEY: &CStr = c"com.apple.system.thermalpressurelevel";

    // notify(3) lives in libSystem, which every binary links.
    unsafe extern "C" {
        fn notify_register_check(name: *const c_char, out_token: *mut c_int) -> u32;
        fn notify_get_state(token: c_int, state: *mut u64) -> u32;
        fn notify_cancel(token: c_int) -> u32;
    }

    #[link(name = "objc")]
    unsafe extern "C" {
        fn objc_getClass(name: *const c_char) -> *mut c_void;
        fn sel_registerName(name: *const c_char) -> *mut c_void;
        fn objc_msgSend();
        fn objc_autoreleasePoolPush() -> *mut c_void;
        fn objc_autoreleasePoolPop(pool: *mut c_void);
    }

    // NSProcessInfo is in Foundation; linking it makes objc_getClass find the class.
    #[link(name = "Foundation", kind = "framework")]
    unsafe extern "C" {}

    type IOReportSubscriptionRef = *const c_void;

    #[link(name = "IOReport", kind = "dylib")]
    unsafe extern "C" {
        fn IOReportCopyChannelsInGroup(
            group: CFStringRef,
            subgroup: CFStringRef,
            a: u64,
            b: u64,
            c: u64,
        ) -> CFMutableDictionaryRef;
        fn IOReportCreateSubscription(
            a: *const c_void,
            desired: CFMutableDictionaryRef,
            subscribed: *mut CFMutableDictionaryRef,
            channel_id: u64,
            b: CFTypeRef,
        ) -> IOReportSubscriptionRef;
        fn IOReportCreateSamples(
            subscription: IOReportSubscriptionRef,
            channels: CFMutableDictionaryRef,
            a: CFTypeRef,
        ) -> CFDictionaryRef;
        fn IOReportCreateSamplesDelta(
            prev: CFDictionaryRef,
            current: CFDictionaryRef,
            a: CFTypeRef,
        ) -> CFDictionaryRef;
        fn IOReportSimpleGetIntegerValue(channel: CFDictionaryRef, index: i32) -> i64;
        fn IOReportChannelGetChannelName(channel: CFDictionaryRef) -> CFStringRef;
        fn IOReportChannelGetUnitLabel(channel: CFDictionaryRef) -> CFStringRef;
    }

    /// `NSProcessInfo.processInfo.thermalState`, through the Objective-C runtime.
    fn process_info_thermal_state() -> Option<i64> {
        type MsgSendId = unsafe extern "C" fn(*mut c_void, *mut c_void) -> *mut c_void;
        type MsgSendInt = unsafe extern "C" fn(*mut c_void, *mut c_void) -> isize;
        // SAFETY: objc_msgSend must be called through a pointer of the method's exact type;
        // `+processInfo` returns an object and `-thermalState` an NSInteger, both taking
        // only (self, _cmd). The pool drains anything autoreleased on this worker thread.
        unsafe {
            let pool = objc_autoreleasePoolPush();
            let class = objc_getClass(c"NSProcessInfo".as_ptr());
            let state = if class.is_null() {
                None
            } else {
                let send_id =
                    std::mem::transmute::<unsafe extern "C" fn(), MsgSendId>(objc_msgSend);
                let send_int =
                    std::mem::transmute::<unsafe extern "C" fn(), MsgSendInt>(objc_msgSend);
                let info = send_id(class, sel_registerName(c"processInfo".as_ptr()));
                if info.is_null() {
                    None
                } else {
                    Some(send_int(info, sel_registerName(c"thermalState".as_ptr())) as i64)
                }
            };
            objc_autoreleasePoolPop(pool);
            state
        }
    }

    fn cf_string(s: CFStringRef) -> String {
        if s.is_null() {
            return String::new();
        }
        // SAFETY: a non-null CFStringRef from an IOReport getter, borrowed (get rule).
        unsafe { CFString::wrap_under_get_rule(s) }.to_string()
    }

    /// The IOReport subscription to the "Energy Model" group and its last sample.
    struct EnergyModel {
        subscription: IOReportSubscriptionRef,
        channels: CFMutableDictionaryRef,
        subscribed: CFMutableDictionaryRef,
        previous: CFDictionaryRef,
        previous_at: Instant,
    }

    impl EnergyModel {
        fn open() -> Result<Self, String> {
            let group = CFString::from_static_string("Energy Model");
            // SAFETY: arguments as the library expects (group name, null subgroup, zeros);
            // every object created here is owned by the returned value or released on error.
            unsafe {
                let channels =
                    IOReportCopyChannelsInGroup(group.as_concrete_TypeRef(), ptr::null(), 0, 0, 0);
                if channels.is_null() {
                    return Err(
                        "IOReport has no \"Energy Model\" group (not Apple Silicon, or a \
                                virtual machine)"
                            .to_string(),
                    );
                }
                let mut subscribed: CFMutableDictionaryRef = ptr::null_mut();
                let subscription = IOReportCreateSubscription(
                    ptr::null(),
                    channels,
                    &mut subscribed,
                    0,
                    ptr::null(),
                );
                if subscription.is_null() {
                    CFRelease(channels as CFTypeRef);
                    return Err("IOReport refused the \"Energy Model\" subscription".to_string());
                }
                let sample_from = if subscribed.is_null() {
                    channels
                } else {
                    subscribed
                };
                let previous = IOReportCreateSamples(subscription, sample_from, ptr::null());
                if previous.is_null() {
                    if !subscribed.is_null() {
                        CFRelease(subscribed as CFTypeRef);
                    }
                    CFRelease(subscription as CFTypeRef);
                    CFRelease(channels as CFTypeRef);
                    return Err("IOReport returned no first sample".to_string());
                }
                Ok(EnergyModel {
                    subscription,
                    channels,
                    subscribed,
                    previous,
                    previous_at: Instant::now(),
                })
            }
        }

        /// Joules since the previous call and the seconds they took.
        fn sample(&mut self) -> Result<(f64, f64), String> {
            let sample_from = if self.subscribed.is_null() {
                self.channels
            } else {
                self.subscribed
            };
            // SAFETY: the subscription and dictionaries are alive (owned by self); each
            // sample and delta is released exactly once; channel dictionaries and strings
            // are borrowed from the delta while it is alive.
            unsafe {
                let current = IOReportCreateSamples(self.subscription, sample_from, ptr::null());
                if current.is_null() {
                    return Err("IOReport returned no sample".to_string());
                }
                let now = Instant::now();
                let delta = IOReportCreateSamplesDelta(self.previous, current, ptr::null());
                CFRelease(self.previous as CFTypeRef);
                self.previous = current;
                let secs = now
                    .saturating_duration_since(self.previous_at)
                    .as_secs_f64();
                self.previous_at = now;
                if delta.is_null() {
                    return Err("IOReport returned no sample delta".to_string());
                }
                let key = CFString::from_static_string("IOReportChannels");
                let array = CFDictionaryGetValue(delta, key.as_concrete_TypeRef() as *const c_void)
                    as CFArrayRef;
                let result = if array.is_null() {
                    Err("IOReport sample has no IOReportChannels".to_string())
                } else {
                    let items: Vec<(String, i64, String)> = (0..CFArrayGetCount(array))
                        .map(|i| {
                            let ch = CFArrayGetValueAtIndex(array, i) as CFDictionaryRef;
                            (
                                cf_string(IOReportChannelGetChannelName(ch)),
                                IOReportSimpleGetIntegerValue(ch, 0),
                                cf_string(IOReportChannelGetUnitLabel(ch)),
                            )
                        })
                        .collect();
                    total_joules(items.iter().map(|(n, v, u)| (n.as_str(), *v, u.as_str())))
                        .map(|j| (j, secs))
                };
                CFRelease(delta as CFTypeRef);
                result
            }
        }
    }

    impl Drop for EnergyModel {
        fn drop(&mut self) {
            // SAFETY: each object was created by this value and is released once.
            unsafe {
                CFRelease(self.previous as CFTypeRef);
                if !self.subscribed.is_null() {
                    CFRelease(self.subscribed as CFTypeRef);
                }
                CFRelease(self.subscription as CFTypeRef);
                CFRelease(self.channels as CFTypeRef);
            }
        }
    }

    pub struct Inner {
        pressure_token: Option<c_int>,
        energy: Result<EnergyModel, String>,
        energy_joules: f64,
    }

    // SAFETY: the CoreFoundation objects inside are only touched through &mut self, one
    // thread at a time; CF retain/release is thread-safe, so moving them between tokio
    // worker threads is sound.
    unsafe impl Send for Inner {}

    impl Inner {
        pub fn open() -> Result<Self, String> {
            let mut token: c_int = 0;
            // SAFETY: a valid NUL-terminated name and a valid out pointer.
            let status = unsafe { notify_register_check(PRESSURE_KEY.as_ptr(), &mut token) };
            let pressure_token = (status == NOTIFY_STATUS_OK).then_some(token);
            if pressure_token.is_none() && process_info_thermal_state().is_none() {
                return Err(format!(
                    "the apple sensor cannot read the thermal state: notify_register_check \
                     failed ({status}) and NSProcessInfo is unavailable"
                ));
            }
            Ok(Inner {
                pressure_token,
                energy: EnergyModel::open(),
                energy_joules: 0.0,
            })
        }

        fn thermal(&self, errors: &mut Vec<String>) -> ThermalState {
            if let Some(token) = self.pressure_token {
                let mut level: u64 = 0;
                // SAFETY: a token from notify_register_check and a valid out pointer.
                let status = unsafe { notify_get_state(token, &mut level) };
                if status == NOTIFY_STATUS_OK {
                    return apple_pressure_state(level);
                }
                errors.push(format!(
                    "thermal pressure: notify_get_state failed ({status})"
                ));
            }
            match process_info_thermal_state() {
                Some(state) => apple_process_info_state(state),
                None => {
                    errors.push("thermal state: NSProcessInfo unavailable".to_string());
                    ThermalState::Unknown
                }
            }
        }

        pub fn read(&mut self) -> Reading {
            let mut r = Reading::default();
            r.thermal = self.thermal(&mut r.errors);
            match self.energy.as_mut() {
                Ok(model) => match model.sample() {
                    Ok((joules, secs)) => {
                        self.energy_joules += joules;
                        r.energy_joules = Some(self.energy_joules);
                        if secs > 0.0 {
                            r.watts = Some(joules / secs);
                        }
                    }
                    Err(e) => r.errors.push(format!("power unknown: {e}")),
                },
                Err(e) => r.errors.push(format!("power unknown: {e}")),
            }
            r
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            if let Some(token) = self.pressure_token {
                // SAFETY: a token we registered and cancel once.
                unsafe {
                    notify_cancel(token);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(energy_to_joules(1500, "mJ"), Some(1.5));
        assert_eq!(energy_to_joules(2_000_000, "uJ"), Some(2.0));
        assert_eq!(energy_to_joules(2_000_000, "µJ"), Some(2.0));
        assert_eq!(energy_to_joules(271_087_000, "nJ"), Some(0.271087));
        assert_eq!(energy_to_joules(3, " J "), Some(3.0));
        assert_eq!(energy_to_joules(1, "mW"), None);
        assert_eq!(energy_to_joules(1, ""), None);
        assert_eq!(energy_to_joules(-5, "mJ"), None);
    }

    #[test]
    fn channel_selection_and_total() {
        for name in [
            "CPU Energy",
            "DIE_1_CPU Energy",
            "GPU Energy",
            "ANE",
            "ANE0_1",
            "DRAM0",
            "GPU SRAM0",
        ] {
            assert!(counts_toward_total(name), "{name}");
        }
        for name in ["ECPU0", "PCPU3", "EACC_CPU", "PACC0_CPU", "DISP", "ISP"] {
            assert!(!counts_toward_total(name), "{name}");
        }
        let sample = [
            ("CPU Energy", 1200, "mJ"),
            ("PCPU0", 900, "mJ"), // inside CPU Energy: not counted again
            ("GPU Energy", 300_000_000, "nJ"),
            ("ANE", 0, "mJ"),
            ("DRAM", 500, "mJ"),
        ];
        let total = total_joules(sample).unwrap();
        assert!((total - 2.0).abs() < 1e-12, "{total}");
        assert!(
            total_joules([("GPU Energy", 1, "furlongs")])
                .unwrap_err()
                .contains("furlongs")
        );
        assert!(total_joules([("ISP", 1, "mJ")]).is_err());
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn open_elsewhere_says_macos_only() {
        assert_eq!(
            AppleSensor::open().err().as_deref(),
            Some("the apple sensor works only on macOS")
        );
    }
}
