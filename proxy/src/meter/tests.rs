#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use std::time::{Duration, Instant};

struct Fixture {
    name: &'static str,
    protocol: Protocol,
    framing: Framing,
    body: &'static [u8],
}

macro_rules! fixture {
    ($file:literal, $protocol:ident, $framing:ident) => {
        Fixture {
            name: $file,
            protocol: Protocol::$protocol,
            framing: Framing::$framing,
            body: include_bytes!(concat!("fixtures/", $file)),
        }
    };
}

/// Captured-style bodies for every generating endpoint, streaming and not.
const FIXTURES: &[Fixture] = &[
    fixture!("ollama_generate.ndjson", OllamaGenerate, Ndjson),
    fixture!("ollama_chat_think.ndjson", OllamaChat, Ndjson),
    fixture!("ollama_chat_tools.ndjson", OllamaChat, Ndjson),
    fixture!("ollama_error.ndjson", OllamaGenerate, Ndjson),
    fixture!("llamacpp_chat.sse", OpenAiChat, Sse),
    fixture!("llamacpp_completion.sse", OpenAiCompletion, Sse),
    fixture!("ollama_openai_chat.sse", OpenAiChat, Sse),
    fixture!("ollama_generate.json", OllamaGenerate, WholeJson),
    fixture!("ollama_chat.json", OllamaChat, WholeJson),
    fixture!("llamacpp_chat.json", OpenAiChat, WholeJson),
    fixture!("ollama_openai_completion.json", OpenAiCompletion, WholeJson),
    fixture!("ollama_embed.json", Embedding, WholeJson),
    fixture!("openai_embeddings.json", Embedding, WholeJson),
    fixture!("ollama_error.json", OllamaGenerate, WholeJson),
];

fn fixture(name: &str) -> &'static Fixture {
    FIXTURES.iter().find(|f| f.name == name).unwrap()
}

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);

/// Feeds `body` cut at the sorted offsets `cuts`; chunk `j` arrives `j + 1` ms after start.
fn run(p: Protocol, f: Framing, body: &[u8], cuts: &[usize]) -> MeterReport {
    let t0 = Instant::now();
    let mut m = Meter::new(p, f, t0);
    let mut from = 0;
    let mut j = 0;
    for &cut in cuts {
        j += 1;
        m.feed(&body[from..cut], t0 + MS * j);
        from = cut;
    }
    // As the relay feeds it: the last chunk is known to end the body.
    m.feed_final(&body[from..], t0 + MS * (j + 1));
    m.finish(t0 + MS * (j + 2))
}

/// Feeds one byte at a time, byte `i` arriving `i + 1` µs after start, which reveals the
/// offset of the byte that completed each timed event.
fn run_bytewise(p: Protocol, f: Framing, body: &[u8]) -> MeterReport {
    let t0 = Instant::now();
    let mut m = Meter::new(p, f, t0);
    for (i, b) in body.iter().enumerate() {
        m.feed(std::slice::from_ref(b), t0 + US * (i as u32 + 1));
    }
    m.finish(t0 + US * (body.len() as u32 + 1))
}

/// Feeds one frame at a time (NDJSON lines or SSE events), frame `k` arriving at
/// 100 ms + 25 ms × k, as a server writing one token per frame would.
fn run_paced(fx: &Fixture, separator: &str) -> MeterReport {
    let t0 = Instant::now();
    let mut m = Meter::new(fx.protocol, fx.framing, t0);
    let body = std::str::from_utf8(fx.body).unwrap();
    for (k, frame) in body.split_inclusive(separator).enumerate() {
        m.feed(frame.as_bytes(), t0 + MS * (100 + 25 * k as u32));
    }
    m.finish(t0 + MS * 1000)
}

/// The report without anything that depends on when the chunks arrived.
fn untimed(mut r: MeterReport) -> MeterReport {
    r.total = Duration::ZERO;
    r.first_byte_at = None;
    r.last_byte_at = None;
    r.first_token_at = None;
    r.last_token_at = None;
    r.decode_tok_s = None;
    r
}

/// When, in a run cut at `cuts`, the chunk holding byte `offset` arrived.
fn arrival(cuts: &[usize], offset: usize) -> Duration {
    MS * (cuts.iter().filter(|&&c| c <= offset).count() as u32 + 1)
}

/// The byte offset a bytewise run's instant stands for.
fn offset_of(d: Duration) -> usize {
    (d.as_micros() - 1) as usize
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn with_line_ending(body: &[u8], ending: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == b'\n' {
            out.extend_from_slice(ending);
        } else {
            out.push(b);
        }
    }
    out
}

// ---- one test per fixture: the exact figures ----

#[test]
fn ollama_generate_stream() {
    let fx = fixture("ollama_generate.ndjson");
    let r = run_paced(fx, "\n");
    assert_eq!(r.tokens, 8);
    assert_eq!(r.tokens_source, TokensSource::Measured);
    assert_eq!(r.first_token_at, Some(MS * 100));
    assert_eq!(r.last_token_at, Some(MS * 275));
    assert!(close(r.decode_tok_s.unwrap(), 7.0 / 0.175));
    assert!(r.done && r.succeeded());
    assert_eq!(r.parse_errors, 0);
    let c = &r.claimed;
    assert_eq!(c.eval_count, Some(8));
    assert!(close(c.eval_duration_s.unwrap(), 0.198));
    assert_eq!(c.prompt_eval_count, Some(30));
    assert!(close(c.prompt_eval_duration_s.unwrap(), 0.613));
    assert!(close(c.total_duration_s.unwrap(), 1.840213417));
    assert!(close(c.tok_s.unwrap(), 8.0 / 0.198));
    assert_eq!(c.decode_tok_s(), c.tok_s);
    assert_eq!(c.usage_completion_tokens, None);
    assert_eq!(r.bytes, fx.body.len() as u64);
    assert_eq!(r.first_byte_at, Some(MS * 100));
}

#[test]
fn ollama_chat_stream_counts_thinking() {
    let r = run_paced(fixture("ollama_chat_think.ndjson"), "\n");
    assert_eq!(r.tokens, 7);
    assert_eq!(r.claimed.eval_count, Some(7));
    assert_eq!(r.first_token_at, Some(MS * 100));
    assert_eq!(r.last_token_at, Some(MS * 250));
    assert!(r.succeeded());
}

#[test]
fn ollama_chat_stream_counts_a_tool_call() {
    let r = run_paced(fixture("ollama_chat_tools.ndjson"), "\n");
    // Ollama sends a whole tool call as one chunk: one measured, 25 claimed.
    assert_eq!(r.tokens, 1);
    assert_eq!(r.claimed.eval_count, Some(25));
    assert_eq!(r.decode_tok_s, None);
    assert!(r.succeeded());
}

#[test]
fn ollama_mid_stream_error() {
    let r = run_paced(fixture("ollama_error.ndjson"), "\n");
    assert_eq!(r.tokens, 2);
    assert!(!r.done);
    assert_eq!(
        r.error.as_deref(),
        Some("an error was encountered while running the model: unexpected EOF")
    );
    assert!(!r.succeeded());
}

#[test]
fn llamacpp_chat_stream() {
    let r = run_paced(fixture("llamacpp_chat.sse"), "\n\n");
    // The opening role-only chunk carries no text.
    assert_eq!(r.tokens, 6);
    assert_eq!(r.first_token_at, Some(MS * 125));
    assert_eq!(r.last_token_at, Some(MS * 250));
    assert!(close(r.decode_tok_s.unwrap(), 5.0 / 0.125));
    assert!(r.succeeded());
    let c = &r.claimed;
    assert_eq!(c.usage_completion_tokens, Some(6));
    assert_eq!(c.usage_prompt_tokens, Some(31));
    assert_eq!(c.llama_timings_predicted_n, Some(6));
    assert_eq!(c.llama_timings_predicted_per_second, Some(143.3));
    assert_eq!(c.llama_timings_predicted_ms, Some(41.87));
    assert_eq!(c.llama_timings_prompt_n, Some(31));
    assert_eq!(c.eval_count, None);
    assert_eq!(c.tok_s, None);
    assert_eq!(c.decode_tok_s(), Some(143.3));
    assert_eq!(c.output_tokens(), Some(6));
    assert_eq!(c.prompt_tokens(), Some(31));
}

#[test]
fn llamacpp_completion_stream() {
    let r = run_paced(fixture("llamacpp_completion.sse"), "\n\n");
    assert_eq!(r.tokens, 5);
    assert_eq!(r.first_token_at, Some(MS * 100));
    assert_eq!(r.last_token_at, Some(MS * 200));
    assert!(r.succeeded());
    assert_eq!(r.claimed.usage_completion_tokens, Some(5));
    assert_eq!(r.claimed.llama_timings_predicted_per_second, Some(147.49));
}

#[test]
fn ollama_openai_chat_stream_with_usage() {
    let r = run_paced(fixture("ollama_openai_chat.sse"), "\n\n");
    // One reasoning chunk and four content chunks.
    assert_eq!(r.tokens, 5);
    assert_eq!(r.claimed.usage_completion_tokens, Some(5));
    assert_eq!(r.claimed.usage_prompt_tokens, Some(27));
    assert!(r.succeeded());
}

#[test]
fn whole_responses_report_claimed_counts() {
    let cases: [(&str, u64, TokensSource); 7] = [
        ("ollama_generate.json", 17, TokensSource::Claimed),
        ("ollama_chat.json", 9, TokensSource::Claimed),
        ("llamacpp_chat.json", 10, TokensSource::Claimed),
        ("ollama_openai_completion.json", 5, TokensSource::Claimed),
        ("ollama_embed.json", 0, TokensSource::None),
        ("openai_embeddings.json", 0, TokensSource::None),
        ("ollama_error.json", 0, TokensSource::None),
    ];
    for (name, tokens, source) in cases {
        let fx = fixture(name);
        let r = run(fx.protocol, fx.framing, fx.body, &[]);
        assert_eq!((r.tokens, r.tokens_source), (tokens, source), "{name}");
        assert!(r.done, "{name}");
        assert_eq!(r.parse_errors, 0, "{name}");
        assert_eq!(r.first_token_at, None, "{name}");
        assert_eq!(r.decode_tok_s, None, "{name}");
        assert_eq!(r.first_byte_at, Some(MS), "{name}");
    }
    let r = |name| {
        let fx = fixture(name);
        run(fx.protocol, fx.framing, fx.body, &[])
    };
    let g = r("ollama_generate.json");
    assert!(close(g.claimed.tok_s.unwrap(), 17.0 / 0.412));
    assert_eq!(g.claimed.prompt_eval_count, Some(30));
    let l = r("llamacpp_chat.json");
    assert_eq!(l.claimed.usage_completion_tokens, Some(10));
    assert_eq!(l.claimed.llama_timings_predicted_per_second, Some(142.65));
    assert_eq!(l.claimed.llama_timings_prompt_n, Some(31));
    assert_eq!(r("ollama_embed.json").claimed.prompt_eval_count, Some(8));
    assert_eq!(
        r("openai_embeddings.json").claimed.usage_prompt_tokens,
        Some(8)
    );
    let e = r("ollama_error.json");
    assert_eq!(
        e.error.as_deref(),
        Some("model \"llama9\" not found, try pulling it first")
    );
    assert!(!e.succeeded());
}

// ---- timing rules ----

#[test]
fn first_token_time_is_the_chunk_that_completed_the_line() {
    let fx = fixture("ollama_generate.ndjson");
    let nl = fx.body.iter().position(|&b| b == b'\n').unwrap();
    let r = run_bytewise(fx.protocol, fx.framing, fx.body);
    assert_eq!(offset_of(r.first_token_at.unwrap()), nl);
    // The last token line ends at the second-to-last newline.
    let last_nl = fx.body[..fx.body.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    assert_eq!(offset_of(r.last_token_at.unwrap()), last_nl);
}

#[test]
fn sse_token_counts_when_its_event_ends() {
    let fx = fixture("llamacpp_chat.sse");
    let ends: Vec<usize> = fx
        .body
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"\n\n")
        .map(|(i, _)| i + 1)
        .collect();
    let r = run_bytewise(fx.protocol, fx.framing, fx.body);
    // Event 0 is the role chunk; event 1 is the first token.
    assert_eq!(offset_of(r.first_token_at.unwrap()), ends[1]);
    assert_eq!(offset_of(r.last_token_at.unwrap()), ends[6]);
}

#[test]
fn an_unterminated_last_line_counts_when_its_bytes_arrived() {
    let t0 = Instant::now();
    let mut m = Meter::new(Protocol::OllamaGenerate, Framing::Ndjson, t0);
    m.feed(br#"{"response":"a","done":false}"#, t0 + MS * 10);
    m.feed(b"\n", t0 + MS * 20);
    m.feed(br#"{"response":"b","done":false}"#, t0 + MS * 30);
    let r = m.finish(t0 + MS * 500);
    assert_eq!(r.tokens, 2);
    assert_eq!(r.first_token_at, Some(MS * 20));
    assert_eq!(r.last_token_at, Some(MS * 30));
    assert_eq!(r.total, MS * 500);
    assert_eq!(r.decode_tok_s, Some(100.0));
    assert!(!r.done);
}

#[test]
fn no_decode_rate_without_a_span() {
    let t0 = Instant::now();
    let mut m = Meter::new(Protocol::OllamaGenerate, Framing::Ndjson, t0);
    m.feed(
        b"{\"response\":\"a\"}\n{\"response\":\"b\"}\n",
        t0 + MS * 10,
    );
    let r = m.finish(t0 + MS * 20);
    assert_eq!(r.tokens, 2);
    assert_eq!(r.decode_tok_s, None);
}

// ---- SSE details ----

#[test]
fn sse_comments_fields_multiline_data_and_mixed_endings() {
    let body = concat!(
        ": keep-alive\r\n",
        "retry: 3000\r\n",
        "\r\n",
        "id: 1\r\n",
        "event: message\r\n",
        "data:{\"choices\":[{\"index\":0,\r\n",
        "data: \"delta\":{\"content\":\"Hel\"}}]}\r\n",
        "\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\r",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]",
    );
    let r = run(Protocol::OpenAiChat, Framing::Sse, body.as_bytes(), &[]);
    assert_eq!(r.tokens, 2);
    assert!(r.done);
    assert_eq!(r.parse_errors, 0);
    assert_eq!(r.error, None);
}

#[test]
fn sse_error_forms() {
    let cases = [
        // llama.cpp's server: an `error` field.
        concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "error: {\"code\":500,\"message\":\"context shift is disabled\",\"type\":\"server_error\"}\n\n",
        ),
        // OpenAI and Ollama: an error object as data.
        "data: {\"error\":{\"message\":\"context shift is disabled\",\"type\":\"api_error\"}}\n\n",
        // An `error` event.
        "event: error\ndata: {\"message\":\"context shift is disabled\"}\n\n",
        // A bare JSON error body where a stream was expected.
        "{\"error\":{\"code\":500,\"message\":\"context shift is disabled\"}}",
    ];
    for body in cases {
        let r = run(Protocol::OpenAiChat, Framing::Sse, body.as_bytes(), &[]);
        assert_eq!(
            r.error.as_deref(),
            Some("context shift is disabled"),
            "{body}"
        );
        assert!(!r.done, "{body}");
        assert_eq!(r.parse_errors, 0, "{body}");
    }
}

#[test]
fn sse_several_choices_count_each() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"text\":\"a\"},{\"index\":1,\"text\":\"b\"}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\"\"},{\"index\":1,\"text\":\"c\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let r = run(
        Protocol::OpenAiCompletion,
        Framing::Sse,
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.tokens, 3);
    assert!(r.done);
}

// ---- damage and limits ----

#[test]
fn garbage_lines_are_counted_and_skipped() {
    let body = concat!(
        "{\"response\":\"a\",\"done\":false}\n",
        "\n",
        "not json at all\n",
        "{\"response\":\"b\",\"done\":fal\n",
        "\u{fffd}\u{0}\n",
        "{\"response\":\"c\",\"done\":false}\n",
        "{\"response\":\"\",\"done\":true,\"eval_count\":3,\"eval_duration\":1000000}\n",
    );
    let r = run(
        Protocol::OllamaGenerate,
        Framing::Ndjson,
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.tokens, 2);
    assert_eq!(r.parse_errors, 3);
    assert!(r.done);
    assert_eq!(r.claimed.eval_count, Some(3));
}

#[test]
fn a_2_mib_line_stays_within_the_cap_and_the_meter_recovers() {
    for framing in [Framing::Ndjson, Framing::Sse] {
        let t0 = Instant::now();
        let mut m = Meter::new(Protocol::OpenAiChat, framing, t0);
        let garbage = vec![b'x'; 64 * 1024];
        for i in 0..32 {
            m.feed(&garbage, t0 + MS * i);
            assert!(m.buffered_bytes() <= lines::LINE_CAP, "{framing:?}");
        }
        let good = match framing {
            Framing::Sse => "\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            _ => "\n{\"message\":{\"content\":\"a\"}}\n",
        };
        m.feed(good.as_bytes(), t0 + MS * 40);
        let r = m.finish(t0 + MS * 50);
        assert_eq!(r.parse_errors, 1, "{framing:?}");
        assert_eq!(r.tokens, 1, "{framing:?}");
        assert_eq!(r.first_token_at, Some(MS * 40), "{framing:?}");
    }
}

#[test]
fn an_sse_event_of_many_lines_is_capped_too() {
    let t0 = Instant::now();
    let mut m = Meter::with_line_cap(Protocol::OpenAiChat, Framing::Sse, t0, 64);
    for _ in 0..10 {
        m.feed(b"data: 0123456789012345678901234567890123456789\n", t0);
        assert!(m.buffered_bytes() <= 2 * 64);
    }
    m.feed(
        b"\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        t0,
    );
    let r = m.finish(t0);
    assert_eq!((r.parse_errors, r.tokens), (1, 1));
}

#[test]
fn a_huge_whole_body_is_scanned_not_buffered() {
    let mut body = b"{\"model\":\"all-minilm\",\"embeddings\":[".to_vec();
    while body.len() < 8 << 20 {
        body.extend_from_slice(b"[0.010071029,-0.0017594862,0.05007221,\"\\\"]}\"],");
    }
    body.extend_from_slice(b"[]],\"prompt_eval_count\":4096}");
    let t0 = Instant::now();
    let mut m = Meter::new(Protocol::Embedding, Framing::WholeJson, t0);
    for chunk in body.chunks(16 * 1024) {
        m.feed(chunk, t0);
        assert!(m.buffered_bytes() < 4096);
    }
    let r = m.finish(t0);
    assert!(r.done);
    assert_eq!(r.parse_errors, 0);
    assert_eq!(r.claimed.prompt_eval_count, Some(4096));
}

#[test]
fn whole_json_edge_cases() {
    let whole = |s: &str| run(Protocol::OpenAiChat, Framing::WholeJson, s.as_bytes(), &[]);
    // Only top-level members count.
    let r = whole(
        r#"{"choices":[{"usage":{"completion_tokens":99}}],"x":{"eval_count":98},"usage":{"completion_tokens":5}}"#,
    );
    assert_eq!((r.tokens, r.claimed.eval_count), (5, None));
    // A repeated member: the first is kept rather than failing the whole body.
    let r = whole(r#"{"usage":{"completion_tokens":5},"usage":{"completion_tokens":6}}"#);
    assert_eq!(r.tokens, 5);
    // Cut off: members that arrived whole still count, but the body is not done.
    let r = whole(r#"{"usage":{"completion_tokens":5},"timings":{"predicted_n":5,"pred"#);
    assert_eq!((r.tokens, r.done, r.parse_errors), (5, false, 0));
    assert_eq!(r.claimed.llama_timings_predicted_n, None);
    // Trailing bytes after a complete object.
    let r = whole("{\"usage\":{\"completion_tokens\":5}}\n{\"x\":1}");
    assert_eq!((r.tokens, r.done, r.parse_errors), (5, true, 1));
    // Not an object.
    let r = whole("<html>502 Bad Gateway</html>");
    assert_eq!((r.tokens, r.done, r.parse_errors), (0, false, 1));
    // Empty body.
    let r = whole("");
    assert_eq!(
        (r.tokens, r.done, r.parse_errors, r.first_byte_at),
        (0, false, 0, None)
    );
    // A kept member that is not valid JSON fails once, at the end.
    let r = whole(r#"{"usage":{"completion_tokens":5,}}"#);
    assert_eq!((r.tokens, r.parse_errors), (0, 1));
    // Whitespace everywhere, scalars at the end of the object.
    let r = whole(" {\n \"eval_count\" : 12 ,\"eval_duration\":2e9}\n");
    assert_eq!(r.tokens, 12);
    assert_eq!(r.claimed.tok_s, Some(6.0));
}

#[test]
fn an_oversized_kept_member_is_dropped() {
    let big = "x".repeat(whole::KEPT_CAP);
    let body = format!(r#"{{"error":"{big}","usage":{{"completion_tokens":5}}}}"#);
    let r = run(
        Protocol::OpenAiChat,
        Framing::WholeJson,
        body.as_bytes(),
        &[],
    );
    assert_eq!(r.error, None);
    assert_eq!((r.tokens, r.parse_errors, r.done), (5, 1, true));
}

#[test]
fn embeddings_never_count_output() {
    for framing in [Framing::Ndjson, Framing::Sse, Framing::WholeJson] {
        let body = b"{\"response\":\"a\",\"prompt_eval_count\":3}\n";
        let r = run(Protocol::Embedding, framing, body, &[]);
        assert_eq!((r.tokens, r.tokens_source), (0, TokensSource::None));
        assert_eq!(r.first_token_at, None);
    }
}

// ---- choosing the framing ----

#[test]
fn framing_choice() {
    use Framing::*;
    use Protocol::*;
    let cases = [
        (OllamaGenerate, None, None, Ndjson),
        (OllamaChat, Some(true), None, Ndjson),
        (OllamaChat, Some(false), None, WholeJson),
        (OpenAiChat, None, None, WholeJson),
        (OpenAiChat, Some(true), None, Sse),
        (OpenAiCompletion, Some(true), None, Sse),
        (Embedding, Some(true), None, WholeJson),
        // The response's type wins: errors before a stream are plain JSON.
        (
            OllamaGenerate,
            Some(true),
            Some("application/json; charset=utf-8"),
            WholeJson,
        ),
        (OpenAiChat, Some(true), Some("application/json"), WholeJson),
        (
            OpenAiChat,
            Some(false),
            Some("Text/Event-Stream; charset=utf-8"),
            Sse,
        ),
        (
            OllamaChat,
            Some(false),
            Some("application/x-ndjson"),
            Ndjson,
        ),
        (OllamaChat, Some(true), Some("text/plain"), Ndjson),
    ];
    for (p, stream, ct, want) in cases {
        assert_eq!(framing_for(p, stream, ct), want, "{p:?} {stream:?} {ct:?}");
    }
}

// ---- any chunking, any input ----

/// Line endings the fixtures are also replayed with: SSE allows all three.
const ENDINGS: [&[u8]; 3] = [b"\n", b"\r\n", b"\r"];

fn variant(fx: &Fixture, ending: usize) -> Vec<u8> {
    match fx.framing {
        // A whole body's newlines are JSON whitespace, and a lone CR is not.
        Framing::WholeJson => fx.body.to_vec(),
        _ => with_line_ending(fx.body, ENDINGS[ending]),
    }
}

/// The chunking property: everything but the instants matches the unchunked run, and the first
/// and last token (and byte) times are those of the chunks holding the bytes that completed
/// them, located by a bytewise run.
fn check_chunking(
    p: Protocol,
    f: Framing,
    body: &[u8],
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let whole = run(p, f, body, &[]);
    let split = run(p, f, body, cuts);
    let bytewise = run_bytewise(p, f, body);
    prop_assert_eq!(untimed(split.clone()), untimed(whole.clone()));
    prop_assert_eq!(untimed(bytewise.clone()), untimed(whole));
    let expect = |d: Option<Duration>| d.map(|d| arrival(cuts, offset_of(d)));
    prop_assert_eq!(split.first_token_at, expect(bytewise.first_token_at));
    prop_assert_eq!(split.last_token_at, expect(bytewise.last_token_at));
    prop_assert_eq!(split.first_byte_at, expect(bytewise.first_byte_at));
    prop_assert_eq!(split.last_byte_at, expect(bytewise.last_byte_at));
    Ok(())
}

fn sorted_cuts(len: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..max).prop_map(|mut c| {
        c.sort_unstable();
        c
    })
}

fn fixture_case() -> impl Strategy<Value = (usize, usize, Vec<usize>)> {
    (0..FIXTURES.len(), 0..ENDINGS.len()).prop_flat_map(|(i, e)| {
        let len = variant(&FIXTURES[i], e).len();
        (Just(i), Just(e), sorted_cuts(len, 80))
    })
}

/// Fragments that real bodies are made of, so random bodies hit the interesting paths.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    const PARTS: &[&str] = &[
        "\n",
        "\r\n",
        "\r",
        "\n\n",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        " ",
        "data: ",
        "data:",
        "event: error\n",
        "error: ",
        ": ping\n",
        "[DONE]",
        "{\"response\":\"x\",\"done\":false}\n",
        "{\"message\":{\"content\":\"é\"}}",
        "{\"done\":true,\"eval_count\":3,\"eval_duration\":5}",
        "data: {\"choices\":[{\"delta\":{\"content\":\"🦙\"}}]}\n\n",
        "{\"choices\":[{\"text\":\"a\",\"finish_reason\":\"stop\"}]}",
        "\"usage\":{\"completion_tokens\":4}",
        "\"error\":\"e\"",
        "\"timings\":{\"predicted_n\":2}",
        "\"eval_count\":7",
        "{\"error\":{\"message\":\"m\"}}",
    ];
    prop_oneof![
        3 => prop::sample::select(PARTS).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ]
}

fn arbitrary_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..40).prop_map(|v| v.concat())
}

const PROTOCOLS: [Protocol; 5] = [
    Protocol::OllamaGenerate,
    Protocol::OllamaChat,
    Protocol::OpenAiChat,
    Protocol::OpenAiCompletion,
    Protocol::Embedding,
];
const FRAMINGS: [Framing; 3] = [Framing::Ndjson, Framing::Sse, Framing::WholeJson];

#[test]
fn every_fixture_bytewise_matches_whole() {
    for fx in FIXTURES {
        for e in 0..ENDINGS.len() {
            let body = variant(fx, e);
            let whole = run(fx.protocol, fx.framing, &body, &[]);
            let bytewise = run_bytewise(fx.protocol, fx.framing, &body);
            assert_eq!(untimed(bytewise), untimed(whole.clone()), "{} {e}", fx.name);
            // Other line endings change nothing but the byte count.
            let lf = run(fx.protocol, fx.framing, fx.body, &[]);
            assert_eq!(
                MeterReport {
                    bytes: 0,
                    ..untimed(whole)
                },
                MeterReport {
                    bytes: 0,
                    ..untimed(lf)
                },
                "{} {e}",
                fx.name
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fixtures_under_any_chunking((i, e, cuts) in fixture_case()) {
        let fx = &FIXTURES[i];
        check_chunking(fx.protocol, fx.framing, &variant(fx, e), &cuts)?;
    }

    #[test]
    fn arbitrary_bodies_under_any_chunking(
        (body, cuts) in arbitrary_body().prop_flat_map(|b| {
            let len = b.len();
            (Just(b), sorted_cuts(len, 30))
        }),
        p in prop::sample::select(PROTOCOLS.to_vec()),
        f in prop::sample::select(FRAMINGS.to_vec()),
    ) {
        check_chunking(p, f, &body, &cuts)?;
    }

    #[test]
    fn random_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in sorted_cuts(2048, 16),
    ) {
        let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= body.len()).collect();
        for p in PROTOCOLS {
            for f in FRAMINGS {
                let r = run(p, f, &body, &cuts);
                prop_assert_eq!(r.bytes, body.len() as u64);
            }
        }
    }
}

#[test]
fn a_whole_body_in_its_final_chunk_is_read_at_once() {
    let fx = fixture("ollama_generate.json");
    let t0 = Instant::now();
    let mut m = Meter::new(fx.protocol, fx.framing, t0);
    m.feed_final(fx.body, t0 + MS);
    // Nothing was copied aside, as the scan copies the kept members.
    assert_eq!(m.buffered_bytes(), 0);
    let read = m.finish(t0 + MS * 2);
    let scanned = run_bytewise(fx.protocol, fx.framing, fx.body);
    assert_eq!(untimed(read.clone()), untimed(scanned));
    assert!(read.done && read.tokens > 0);
    // After other chunks it is scanned.
    let mut m = Meter::new(fx.protocol, fx.framing, t0);
    m.feed(&fx.body[..1], t0);
    m.feed_final(&fx.body[1..], t0 + MS);
    assert!(m.buffered_bytes() > 0);
}
