//! OTLP trace export, protobuf → OTLP/JSON, in one pass over the wire bytes.
//!
//! The embedded collector stores every export as one OTLP/JSON line. Decoding the protobuf into
//! owned messages and serialising them again costs about as much as everything else the
//! collector does; this transcoder writes the same text straight from the wire bytes: field
//! order, defaults, hex ids, 64-bit integers as strings, and string escaping exactly as the
//! `opentelemetry-proto` serde encoding writes them (a test compares the two on every shape).
//!
//! The text is written as bytes and checked as UTF-8 once, as a whole line, rather than string by
//! string: a string field with invalid UTF-8 makes the line invalid, which sends the export to
//! the full decoder as before.
//!
//! It handles what tracers send. Anything else — a singular message field sent twice (protobuf
//! merges those), double, bytes or string-table values, entity references, groups, invalid
//! UTF-8 or a truncated message — makes it return `None`, and the caller takes the full decoder,
//! which either handles it or reports the error.

/// One protobuf field: its number and its value.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    // Tags, lengths of short strings and small numbers: one byte.
    if let Some(&b) = buf.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Some(u64::from(b));
    }
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        // The tenth byte holds the 64th bit only; protobuf decoders refuse anything more.
        if shift == 63 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

impl<'a> Fields<'a> {
    fn read(&mut self) -> Option<(u32, Wire<'a>)> {
        let mut pos = 0;
        let key = varint(self.buf, &mut pos)?;
        // Field numbers run from 1 to 2^29 - 1, and a key fits in 32 bits.
        let key = u32::try_from(key).ok()?;
        let number = Some(key >> 3).filter(|n| *n > 0)?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(self.buf, &mut pos)?),
            1 => {
                let b: [u8; 8] = self.buf.get(pos..pos + 8)?.try_into().ok()?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(b))
            }
            2 => {
                let len = usize::try_from(varint(self.buf, &mut pos)?).ok()?;
                let b = self.buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Wire::Bytes(b)
            }
            5 => {
                let b: [u8; 4] = self.buf.get(pos..pos + 4)?.try_into().ok()?;
                pos += 4;
                Wire::Fixed32(u32::from_le_bytes(b))
            }
            _ => return None,
        };
        self.buf = &self.buf[pos..];
        Some((number, wire))
    }
}

/// The fields of `buf`; an item is `None` where the bytes stop being a well-formed message (the
/// transcoding stops there).
fn fields(buf: &[u8]) -> impl Iterator<Item = Option<(u32, Wire<'_>)>> {
    let mut f = Fields { buf };
    std::iter::from_fn(move || (!f.buf.is_empty()).then(|| f.read()))
}

fn bytes(w: Wire<'_>) -> Option<&[u8]> {
    match w {
        Wire::Bytes(b) => Some(b),
        _ => None,
    }
}

/// A string field's bytes. Their UTF-8 is checked with the whole line (see the module
/// documentation).
fn string(w: Wire<'_>) -> Option<&[u8]> {
    bytes(w)
}

/// A singular string field: the last occurrence is the value (as protobuf reads it), and an
/// earlier one, which the line will not hold, has its UTF-8 checked here (protobuf refuses the
/// message over it).
fn last_string<'a>(slot: &mut &'a [u8], w: Wire<'a>) -> Option<()> {
    if !slot.is_empty() {
        std::str::from_utf8(slot).ok()?;
    }
    *slot = string(w)?;
    Some(())
}

fn varint_of(w: Wire<'_>) -> Option<u64> {
    match w {
        Wire::Varint(v) => Some(v),
        _ => None,
    }
}

fn fixed64(w: Wire<'_>) -> Option<u64> {
    match w {
        Wire::Fixed64(v) => Some(v),
        _ => None,
    }
}

fn fixed32(w: Wire<'_>) -> Option<u32> {
    match w {
        Wire::Fixed32(v) => Some(v),
        _ => None,
    }
}

/// An absent string or bytes field.
const EMPTY: &[u8] = b"";

/// A singular message field: a second occurrence would be merged by protobuf, which this
/// transcoder leaves to the full decoder.
fn once<'a>(slot: &mut Option<&'a [u8]>, w: Wire<'a>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(bytes(w)?);
    Some(())
}

/// Whether a JSON string needs escaping (`"`, `\`, control characters). Sixteen bytes at a
/// time without early exit inside a block, so the compiler can use vector instructions.
fn needs_escape(b: &[u8]) -> bool {
    let needs = |x: u8| (x < 0x20) | (x == b'"') | (x == b'\\');
    let mut blocks = b.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &x| any | needs(x)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&x| needs(x))
}

/// A string of the message as a JSON string, scrubbed (the line holds no text but its strings,
/// so scrubbing each as the text it is, before escaping, scrubs the line: escaping cannot hide a
/// credential from the patterns). `None` when a string the scrubber must read is not UTF-8 (the
/// full decoder then reports it).
fn push_str(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    if crate::redact::may_need_scrub(s) {
        let clean = crate::redact::scrub(std::str::from_utf8(s).ok()?);
        push_escaped(out, clean.as_bytes());
    } else {
        push_escaped(out, s);
    }
    Some(())
}

/// JSON string, escaped as serde_json escapes (`"`, `\`, control characters). Bytes of
/// multi-byte UTF-8 sequences are never escaped, so escaping byte by byte is escaping character
/// by character.
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if !needs_escape(s) {
        out.extend_from_slice(s);
    } else {
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b if b < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}

fn push_hex(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for byte in b {
        out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
    out.push(b'"');
}

fn push_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_quoted_num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.push(b'"');
    push_num(out, n);
    out.push(b'"');
}

/// `[item,item,…]` from the raw messages.
fn push_list(
    out: &mut Vec<u8>,
    items: &[&[u8]],
    mut each: impl FnMut(&mut Vec<u8>, &[u8]) -> Option<()>,
) -> Option<()> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item)?;
    }
    out.push(b']');
    Some(())
}

/// A JSON value of an object written by [`object`].
enum J<'a> {
    Str(&'a [u8]),
    Hex(&'a [u8]),
    Num(i64),
    /// A 64-bit integer, written as a string (OTLP/JSON).
    U64Str(u64),
    Attrs(&'a [&'a [u8]]),
    List(&'a [&'a [u8]], fn(&mut Vec<u8>, &[u8]) -> Option<()>),
    /// An optional message: `null` when absent.
    Msg(Option<&'a [u8]>, fn(&mut Vec<u8>, &[u8]) -> Option<()>),
    Raw(&'static str),
}

/// `{"name":value,…}` in the order given.
fn object(out: &mut Vec<u8>, members: &[(&str, J<'_>)]) -> Option<()> {
    out.push(b'{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            J::Str(s) => push_str(out, s)?,
            J::Hex(b) => push_hex(out, b),
            J::Num(n) => push_num(out, *n),
            J::U64Str(n) => push_quoted_num(out, *n),
            J::Attrs(items) => push_list(out, items, attribute)?,
            J::List(items, each) => push_list(out, items, each)?,
            J::Msg(Some(b), each) => each(out, b)?,
            J::Msg(None, _) => out.extend_from_slice(b"null"),
            J::Raw(text) => out.extend_from_slice(text.as_bytes()),
        }
    }
    out.push(b'}');
    Some(())
}

/// How deep arrays and key-value lists may nest before the full decoder (with its own recursion
/// limit) takes over: a crafted body must not exhaust the stack.
const MAX_VALUE_DEPTH: u32 = 32;

/// The messages of a message's repeated field 1 (`values` of an `ArrayValue` or a
/// `KeyValueList`, `resource_spans` of the request), other fields skipped.
fn repeated_1(buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut items = Vec::new();
    for f in fields(buf) {
        if let (1, w) = f? {
            items.push(bytes(w)?);
        }
    }
    Some(items)
}

fn any_value(out: &mut Vec<u8>, buf: &[u8], depth: u32) -> Option<()> {
    if depth > MAX_VALUE_DEPTH {
        return None;
    }
    let mut value: Option<(u32, Wire<'_>)> = None;
    for f in fields(buf) {
        let (n, w) = f?;
        if (1..=8).contains(&n) {
            if value.is_some() {
                return None;
            }
            value = Some((n, w));
        }
    }
    match value {
        None => out.extend_from_slice(b"{}"),
        Some((1, w)) => {
            out.extend_from_slice(b"{\"stringValue\":");
            push_str(out, string(w)?)?;
            out.push(b'}');
        }
        Some((2, w)) => {
            out.extend_from_slice(if varint_of(w)? != 0 {
                b"{\"boolValue\":true}".as_slice()
            } else {
                b"{\"boolValue\":false}".as_slice()
            });
        }
        Some((3, w)) => {
            out.extend_from_slice(b"{\"intValue\":");
            push_quoted_num(out, varint_of(w)? as i64);
            out.push(b'}');
        }
        Some((5, w)) => {
            out.extend_from_slice(b"{\"arrayValue\":{\"values\":");
            push_list(out, &repeated_1(bytes(w)?)?, |o, b| {
                any_value(o, b, depth + 1)
            })?;
            out.extend_from_slice(b"}}");
        }
        Some((6, w)) => {
            out.extend_from_slice(b"{\"kvlistValue\":{\"values\":");
            push_list(out, &repeated_1(bytes(w)?)?, |o, b| {
                key_value(o, b, depth + 1)
            })?;
            out.extend_from_slice(b"}}");
        }
        // double (4), bytes (7), string-table index (8): the full decoder.
        Some(_) => return None,
    }
    Some(())
}

fn key_value(out: &mut Vec<u8>, buf: &[u8], depth: u32) -> Option<()> {
    let (mut key, mut value, mut strindex) = (EMPTY, None, 0i32);
    for f in fields(buf) {
        match f? {
            (1, w) => last_string(&mut key, w)?,
            (2, w) => once(&mut value, w)?,
            (3, w) => strindex = varint_of(w)? as i32,
            _ => {}
        }
    }
    // Every attribute comes through here: written directly rather than through [`object`].
    out.extend_from_slice(b"{\"key\":");
    push_str(out, key)?;
    out.extend_from_slice(b",\"value\":");
    match value {
        Some(b) => any_value(out, b, depth)?,
        None => out.extend_from_slice(b"null"),
    }
    // `keyStrindex` is written only when set.
    if strindex != 0 {
        out.extend_from_slice(b",\"keyStrindex\":");
        push_num(out, strindex);
    }
    out.push(b'}');
    Some(())
}

thread_local! {
    static MEMO: std::cell::RefCell<crate::memo::Memo> =
        const { std::cell::RefCell::new(crate::memo::Memo::new()) };
}

/// One attribute of an attribute list (a top-level `KeyValue`), written from the memo
/// ([`crate::memo`]) when its wire bytes were seen before on this thread: the text is a function
/// of the wire bytes alone (scrubbed as [`push_str`] scrubs), so a hit writes exactly what a miss
/// would.
fn attribute(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    MEMO.with_borrow_mut(|memo| memo.write(buf, out, |out| key_value(out, buf, 0)))
}

fn resource(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let (mut attrs, mut dropped) = (Vec::new(), 0u32);
    for f in fields(buf) {
        match f? {
            (1, w) => attrs.push(bytes(w)?),
            (2, w) => dropped = varint_of(w)? as u32,
            // Entity references: the full decoder.
            (3, _) => return None,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("attributes", J::Attrs(&attrs)),
            ("droppedAttributesCount", J::Num(i64::from(dropped))),
            ("entityRefs", J::Raw("[]")),
        ],
    )
}

fn scope(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let (mut name, mut version, mut attrs, mut dropped) = (EMPTY, EMPTY, Vec::new(), 0u32);
    for f in fields(buf) {
        match f? {
            (1, w) => last_string(&mut name, w)?,
            (2, w) => last_string(&mut version, w)?,
            (3, w) => attrs.push(bytes(w)?),
            (4, w) => dropped = varint_of(w)? as u32,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("name", J::Str(name)),
            ("version", J::Str(version)),
            ("attributes", J::Attrs(&attrs)),
            ("droppedAttributesCount", J::Num(i64::from(dropped))),
        ],
    )
}

fn event(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let (mut time, mut name, mut attrs, mut dropped) = (0u64, EMPTY, Vec::new(), 0u32);
    for f in fields(buf) {
        match f? {
            (1, w) => time = fixed64(w)?,
            (2, w) => last_string(&mut name, w)?,
            (3, w) => attrs.push(bytes(w)?),
            (4, w) => dropped = varint_of(w)? as u32,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("timeUnixNano", J::U64Str(time)),
            ("name", J::Str(name)),
            ("attributes", J::Attrs(&attrs)),
            ("droppedAttributesCount", J::Num(i64::from(dropped))),
        ],
    )
}

fn link(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let (mut trace, mut span, mut state) = (EMPTY, EMPTY, EMPTY);
    let (mut attrs, mut dropped, mut flags) = (Vec::new(), 0u32, 0u32);
    for f in fields(buf) {
        match f? {
            (1, w) => trace = bytes(w)?,
            (2, w) => span = bytes(w)?,
            (3, w) => last_string(&mut state, w)?,
            (4, w) => attrs.push(bytes(w)?),
            (5, w) => dropped = varint_of(w)? as u32,
            (6, w) => flags = fixed32(w)?,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("traceId", J::Hex(trace)),
            ("spanId", J::Hex(span)),
            ("traceState", J::Str(state)),
            ("attributes", J::Attrs(&attrs)),
            ("droppedAttributesCount", J::Num(i64::from(dropped))),
            ("flags", J::Num(i64::from(flags))),
        ],
    )
}

fn status(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let (mut message, mut code) = (EMPTY, 0i32);
    for f in fields(buf) {
        match f? {
            (2, w) => last_string(&mut message, w)?,
            (3, w) => code = varint_of(w)? as i32,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("message", J::Str(message)),
            ("code", J::Num(i64::from(code))),
        ],
    )
}

#[derive(Default)]
struct SpanFields<'a> {
    trace: &'a [u8],
    span: &'a [u8],
    state: &'a [u8],
    parent: &'a [u8],
    flags: u32,
    name: &'a [u8],
    kind: i32,
    start: u64,
    end: u64,
    attrs: Vec<&'a [u8]>,
    dropped_attrs: u32,
    events: Vec<&'a [u8]>,
    dropped_events: u32,
    links: Vec<&'a [u8]>,
    dropped_links: u32,
    status: Option<&'a [u8]>,
}

fn span(out: &mut Vec<u8>, buf: &[u8]) -> Option<()> {
    let mut s = SpanFields::default();
    for f in fields(buf) {
        match f? {
            (1, w) => s.trace = bytes(w)?,
            (2, w) => s.span = bytes(w)?,
            (3, w) => last_string(&mut s.state, w)?,
            (4, w) => s.parent = bytes(w)?,
            (5, w) => last_string(&mut s.name, w)?,
            (6, w) => s.kind = varint_of(w)? as i32,
            (7, w) => s.start = fixed64(w)?,
            (8, w) => s.end = fixed64(w)?,
            (9, w) => s.attrs.push(bytes(w)?),
            (10, w) => s.dropped_attrs = varint_of(w)? as u32,
            (11, w) => s.events.push(bytes(w)?),
            (12, w) => s.dropped_events = varint_of(w)? as u32,
            (13, w) => s.links.push(bytes(w)?),
            (14, w) => s.dropped_links = varint_of(w)? as u32,
            (15, w) => once(&mut s.status, w)?,
            (16, w) => s.flags = fixed32(w)?,
            _ => {}
        }
    }
    object(
        out,
        &[
            ("traceId", J::Hex(s.trace)),
            ("spanId", J::Hex(s.span)),
            ("traceState", J::Str(s.state)),
            ("parentSpanId", J::Hex(s.parent)),
            ("flags", J::Num(i64::from(s.flags))),
            ("name", J::Str(s.name)),
            ("kind", J::Num(i64::from(s.kind))),
            ("startTimeUnixNano", J::U64Str(s.start)),
            ("endTimeUnixNano", J::U64Str(s.end)),
            ("attributes", J::Attrs(&s.attrs)),
            ("droppedAttributesCount", J::Num(i64::from(s.dropped_attrs))),
            ("events", J::List(&s.events, event)),
            ("droppedEventsCount", J::Num(i64::from(s.dropped_events))),
            ("links", J::List(&s.links, link)),
            ("droppedLinksCount", J::Num(i64::from(s.dropped_links))),
            ("status", J::Msg(s.status, status)),
        ],
    )
}

/// Writes one item of a list.
type Item<'c> = dyn FnMut(&mut Vec<u8>, &[u8]) -> Option<()> + 'c;

/// `ResourceSpans` or `ScopeSpans`: an optional message (1), a repeated one (2), a schema URL (3).
fn container(
    out: &mut Vec<u8>,
    buf: &[u8],
    names: [&str; 2],
    head: fn(&mut Vec<u8>, &[u8]) -> Option<()>,
    item: &mut Item<'_>,
) -> Option<()> {
    let (mut first, mut items, mut schema) = (None, Vec::new(), EMPTY);
    for f in fields(buf) {
        match f? {
            (1, w) => once(&mut first, w)?,
            (2, w) => items.push(bytes(w)?),
            (3, w) => last_string(&mut schema, w)?,
            _ => {}
        }
    }
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(names[0].as_bytes());
    out.extend_from_slice(b"\":");
    match first {
        Some(b) => head(out, b)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(names[1].as_bytes());
    out.extend_from_slice(b"\":");
    push_list(out, &items, item)?;
    out.extend_from_slice(b",\"schemaUrl\":");
    push_str(out, schema)?;
    out.push(b'}');
    Some(())
}

/// The OTLP/JSON text of an `ExportTraceServiceRequest` in protobuf, and its span count; `None`
/// when the message needs the full decoder (see the module documentation).
pub(crate) fn trace_export_json(body: &[u8], out: &mut String) -> Option<usize> {
    let mut text = std::mem::take(out).into_bytes();
    let spans = transcode(body, &mut text);
    if spans.is_none() {
        // The full decoder takes over: nothing of the partial line is kept or checked.
        text.clear();
    }
    // The one UTF-8 check of every string in the line; the buffer is kept either way.
    match String::from_utf8(text) {
        Ok(line) => {
            *out = line;
            spans
        }
        Err(invalid) => {
            let mut text = invalid.into_bytes();
            text.clear();
            *out = String::from_utf8(text).unwrap_or_default();
            None
        }
    }
}

fn transcode(body: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    out.clear();
    // OTLP/JSON of spans is about three times their protobuf.
    out.reserve(body.len() * 3 + 64);
    let mut spans = 0usize;
    let resource_spans = repeated_1(body)?;
    out.extend_from_slice(b"{\"resourceSpans\":");
    push_list(out, &resource_spans, |out, rs| {
        container(
            out,
            rs,
            ["resource", "scopeSpans"],
            resource,
            &mut |out, ss| {
                container(out, ss, ["scope", "spans"], scope, &mut |out, sp| {
                    spans += 1;
                    span(out, sp)
                })
            },
        )
    })?;
    out.push(b'}');
    Some(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line and span count, in a fresh buffer.
    fn json(body: &[u8]) -> Option<(String, usize)> {
        let mut out = String::new();
        trace_export_json(body, &mut out).map(|n| (out, n))
    }
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
    use prost::Message;

    fn kv(key: &str, v: Option<any_value::Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: v }),
            key_strindex: 0,
        }
    }

    fn rich() -> ExportTraceServiceRequest {
        use any_value::Value as V;
        let attrs = vec![
            kv("s", Some(V::StringValue("plain".into()))),
            kv(
                "esc\"\\",
                Some(V::StringValue("a\"b\\c\nd\te\u{1}f\u{1f}\u{7f}é€😀".into())),
            ),
            kv("b", Some(V::BoolValue(true))),
            kv("f", Some(V::BoolValue(false))),
            kv("i", Some(V::IntValue(-42))),
            kv("max", Some(V::IntValue(i64::MAX))),
            kv("empty", None),
            KeyValue {
                key: "novalue".into(),
                value: None,
                key_strindex: 3,
            },
            kv(
                "arr",
                Some(V::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(V::StringValue("x".into())),
                        },
                        AnyValue {
                            value: Some(V::IntValue(7)),
                        },
                        AnyValue { value: None },
                    ],
                })),
            ),
            kv(
                "kv",
                Some(V::KvlistValue(KeyValueList {
                    values: vec![kv("inner", Some(V::BoolValue(false)))],
                })),
            ),
        ];
        let full = Span {
            trace_id: vec![0x6b, 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
            span_id: vec![1, 2, 3, 4, 5, 6, 7, 0xab],
            trace_state: "k=v".into(),
            parent_span_id: vec![9; 8],
            flags: 257,
            name: "gateway.inbound".into(),
            kind: 2,
            start_time_unix_nano: 1_795_931_890_037_119_276,
            end_time_unix_nano: u64::MAX,
            attributes: attrs.clone(),
            dropped_attributes_count: 2,
            events: vec![span::Event {
                time_unix_nano: 5,
                name: "exception".into(),
                attributes: attrs.clone(),
                dropped_attributes_count: 1,
            }],
            dropped_events_count: 3,
            links: vec![span::Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: String::new(),
                attributes: vec![kv("l", Some(V::IntValue(1)))],
                dropped_attributes_count: 0,
                flags: 1,
            }],
            dropped_links_count: 4,
            status: Some(Status {
                message: "denied: expired".into(),
                code: 2,
            }),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv(
                            "service.name",
                            Some(V::StringValue("gateway".into())),
                        )],
                        dropped_attributes_count: 1,
                        entity_refs: vec![],
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "tokentrail".into(),
                                version: "1".into(),
                                attributes: attrs,
                                dropped_attributes_count: 0,
                            }),
                            spans: vec![full, Span::default()],
                            schema_url: "https://opentelemetry.io/schemas/1.0".into(),
                        },
                        ScopeSpans::default(),
                    ],
                    schema_url: String::new(),
                },
                ResourceSpans::default(),
            ],
        }
    }

    #[test]
    fn writes_what_the_serde_encoding_writes() {
        let req = rich();
        let (line, spans) = json(&req.encode_to_vec()).expect("fast path");
        assert_eq!(line, serde_json::to_string(&req).expect("serde"));
        assert_eq!(spans, 2);
        let empty = ExportTraceServiceRequest::default();
        assert_eq!(
            json(&empty.encode_to_vec()).expect("fast path").0,
            serde_json::to_string(&empty).expect("serde")
        );
    }

    /// A recurring attribute is written from the memo as it was first transcoded (scrubbed
    /// included), and attributes that share a slot (here three times as many as there are
    /// slots) only replace each other.
    #[test]
    fn recurring_attributes_come_from_the_memo_as_they_were_transcoded() {
        use any_value::Value as V;
        let mut req = rich();
        let span = &mut req.resource_spans[0].scope_spans[0].spans[0];
        span.attributes.push(kv(
            "authorization",
            Some(V::StringValue("Bearer\topaque0123456789".into())),
        ));
        span.attributes.extend(
            (0..3 * crate::memo::SLOTS).map(|i| kv(&format!("k{i}"), Some(V::IntValue(i as i64)))),
        );
        let body = req.encode_to_vec();
        let want =
            crate::redact::scrub_json(&serde_json::to_string(&req).expect("serde")).into_owned();
        // The first transcoding fills the memo; the next ones read from it.
        for _ in 0..3 {
            let (line, _) = json(&body).expect("fast path");
            assert_eq!(line, want);
            assert!(!line.contains("opaque0123456789"));
        }
    }

    #[test]
    fn deep_nesting_goes_to_the_full_decoder_without_exhausting_the_stack() {
        use any_value::Value as V;
        let nest = |levels: usize| {
            let mut v = AnyValue {
                value: Some(V::StringValue("leaf".into())),
            };
            for _ in 0..levels {
                v = AnyValue {
                    value: Some(V::ArrayValue(ArrayValue { values: vec![v] })),
                };
            }
            let mut req = rich();
            req.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(KeyValue {
                    key: "deep".into(),
                    value: Some(v),
                    key_strindex: 0,
                });
            req
        };
        let shallow = nest(10);
        let (line, _) = json(&shallow.encode_to_vec()).expect("fast path");
        assert_eq!(line, serde_json::to_string(&shallow).expect("serde"));
        assert!(json(&nest(40).encode_to_vec()).is_none());
        // Far deeper than any decoder accepts, built on the wire: no line, no overflow.
        // AnyValue{arrayValue: ArrayValue{values: [AnyValue{…}]}} 50 000 times around a leaf.
        let levels = 50_000;
        let leaf = [0x0a, 0x01, b'x'];
        let varint_len = |n: usize| {
            let mut v = Vec::new();
            push_len(&mut v, n);
            v.len()
        };
        let (mut lens, mut len) = (Vec::with_capacity(levels), leaf.len());
        for _ in 0..levels {
            let array = 1 + varint_len(len) + len;
            lens.push((array, len));
            len = 1 + varint_len(array) + array;
        }
        let mut value = Vec::with_capacity(len);
        for (array, inner) in lens.iter().rev() {
            value.push(0x2a);
            push_len(&mut value, *array);
            value.push(0x0a);
            push_len(&mut value, *inner);
        }
        value.extend_from_slice(&leaf);
        assert_eq!(value.len(), len);
        let mut kv = vec![0x0a, 0x01, b'k', 0x12];
        push_len(&mut kv, value.len());
        kv.extend_from_slice(&value);
        let mut span = vec![0x4a];
        push_len(&mut span, kv.len());
        span.extend_from_slice(&kv);
        let wrap = |tag: u8, inner: Vec<u8>| {
            let mut v = vec![tag];
            push_len(&mut v, inner.len());
            v.extend_from_slice(&inner);
            v
        };
        let body = wrap(0x0a, wrap(0x12, wrap(0x12, span)));
        assert!(json(&body).is_none());
        assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
    }

    fn push_len(v: &mut Vec<u8>, mut len: usize) {
        while len >= 0x80 {
            v.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        v.push(len as u8);
    }

    /// A line only for what the full decoder accepts, and then the same text.
    fn agrees_with_the_full_decoder(
        body: &[u8],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Some((line, _)) = json(body) {
            let req = ExportTraceServiceRequest::decode(body);
            proptest::prop_assert!(req.is_ok());
            if let Ok(req) = req {
                proptest::prop_assert_eq!(line, serde_json::to_string(&req).expect("serde"));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        #[test]
        fn any_bytes_give_the_full_decoders_answer_or_none(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            agrees_with_the_full_decoder(&body)?;
        }

        #[test]
        fn strings_are_scrubbed_as_the_decoders_line_is_string_by_string(
            before in "[ -~\t\n]{0,12}",
            secret in proptest::sample::select(vec![
                "Bearer\topaque0123456789".to_owned(),
                "basic\nopaque0123456789".to_owned(),
                "\nwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
                crate::fixtures::jwt("alice"),
                "plain".to_owned(),
            ]),
            after in "[ -~\t\n]{0,12}",
        ) {
            let text = format!("{before} {secret} {after}");
            let mut req = rich();
            let span = &mut req.resource_spans[0].scope_spans[0].spans[0];
            span.name = text.clone();
            span.attributes.push(kv(&text, Some(any_value::Value::StringValue(text.clone()))));
            let (line, _) = json(&req.encode_to_vec()).expect("fast path");
            let serde = serde_json::to_string(&req).expect("serde");
            proptest::prop_assert_eq!(&line, &crate::redact::scrub_json(&serde).into_owned());
            if secret != "plain" {
                proptest::prop_assert!(!line.contains("opaque0123456789"));
                proptest::prop_assert!(!line.contains("EXAMPLEKEY"));
                proptest::prop_assert!(crate::redact::find_jwts(&line).is_empty());
            }
        }

        #[test]
        fn mutated_exports_give_the_full_decoders_answer_or_none(at in 0usize..4000, byte in proptest::num::u8::ANY) {
            let mut body = rich().encode_to_vec();
            let i = at % body.len();
            body[i] = byte;
            agrees_with_the_full_decoder(&body)?;
        }
    }

    #[test]
    fn a_string_field_sent_twice_is_its_last_value_and_both_must_be_utf8() {
        // request → resource spans (1) → scope spans (2) → span (2) with `name` (5) twice.
        let body = |first: &[u8]| {
            let mut span = vec![0x2a, first.len() as u8];
            span.extend_from_slice(first);
            span.extend_from_slice(&[0x2a, 0x01, b'n']);
            let wrap = |tag: u8, inner: Vec<u8>| {
                let mut v = vec![tag, inner.len() as u8];
                v.extend_from_slice(&inner);
                v
            };
            wrap(0x0a, wrap(0x12, wrap(0x12, span)))
        };
        let valid = body(b"m");
        let req = ExportTraceServiceRequest::decode(&valid[..]).expect("valid");
        let (line, spans) = json(&valid).expect("transcoded");
        assert_eq!(
            (line.as_str(), spans),
            (serde_json::to_string(&req).expect("serde").as_str(), 1)
        );
        assert!(line.contains(r#""name":"n""#), "{line}");
        // The first value never reaches the line, and protobuf still refuses it.
        let invalid = body(&[0xff]);
        assert!(ExportTraceServiceRequest::decode(&invalid[..]).is_err());
        assert!(json(&invalid).is_none());
    }

    #[test]
    fn unknown_fields_are_skipped_as_protobuf_does() {
        let req = rich();
        let mut body = req.encode_to_vec();
        // Field 99, varint; field 98, length-delimited; field 97, fixed32: unknown to OTLP.
        body.extend_from_slice(&[0x98, 0x06, 0x01, 0x92, 0x06, 0x02, b'h', b'i', 0x8d, 0x06]);
        body.extend_from_slice(&[1, 2, 3, 4]);
        let (line, _) = json(&body).expect("fast path");
        assert_eq!(line, serde_json::to_string(&req).expect("serde"));
    }

    #[test]
    fn what_it_does_not_handle_goes_to_the_full_decoder() {
        use any_value::Value as V;
        for v in [
            V::DoubleValue(1.5),
            V::BytesValue(vec![1, 2]),
            V::StringValueStrindex(1),
        ] {
            let mut req = rich();
            req.resource_spans[0].scope_spans[0].spans[0]
                .attributes
                .push(kv("other", Some(v)));
            assert!(json(&req.encode_to_vec()).is_none());
        }
        let body = rich().encode_to_vec();
        // Truncated anywhere: never a line, never a panic.
        for cut in 1..body.len() {
            if let Some((line, _)) = json(&body[..cut]) {
                // A cut at a field boundary of the outer message is a shorter valid message.
                let req = ExportTraceServiceRequest::decode(&body[..cut]).expect("valid prefix");
                assert_eq!(line, serde_json::to_string(&req).expect("serde"));
            }
        }
        // Invalid UTF-8 in a string.
        let mut req = ExportTraceServiceRequest::default();
        req.resource_spans.push(ResourceSpans::default());
        let mut bad = req.encode_to_vec();
        bad.extend_from_slice(&[0x0a, 0x04, 0x1a, 0x02, 0xff, 0xfe]);
        assert!(json(&bad).is_none());
        assert!(ExportTraceServiceRequest::decode(&bad[..]).is_err());
        // A status sent twice (protobuf merges them).
        let mut twice = Span::default().encode_to_vec();
        for _ in 0..2 {
            twice.extend_from_slice(&[0x7a, 0x02, 0x18, 0x01]);
        }
        let mut ss = vec![0x12, twice.len() as u8];
        ss.extend_from_slice(&twice);
        let mut rs = vec![0x12, ss.len() as u8];
        rs.extend_from_slice(&ss);
        let mut top = vec![0x0a, rs.len() as u8];
        top.extend_from_slice(&rs);
        assert!(ExportTraceServiceRequest::decode(&top[..]).is_ok());
        assert!(json(&top).is_none());
    }
}
