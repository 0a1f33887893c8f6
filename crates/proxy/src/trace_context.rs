//! W3C Trace Context (`traceparent`): continue an incoming trace with a span id of the
//! gateway's own, or start a new one. The observability issue adds span export on top.
/// A parsed or generated `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, never all zeros.
    pub trace_id: u128,
    /// 8-byte span id, never zero.
    pub span_id: u64,
    /// Trace flags (bit 0 = sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a version-00 header; anything invalid gives `None`.
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim();
        let mut parts = s.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let lower_hex = |x: &str| {
            x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if ![version, trace, span, flags].iter().all(|x| lower_hex(x)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new sampled trace with fresh ids.
    pub fn new_root() -> TraceParent {
        TraceParent {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 0x01,
        }
    }

    /// The gateway's own span in the same trace: same trace id and flags, new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// Continues `incoming` when it is valid, else starts a new trace.
    pub fn continue_or_start(incoming: Option<&str>) -> TraceParent {
        incoming
            .and_then(TraceParent::parse)
            .map(|p| p.child())
            .unwrap_or_else(TraceParent::new_root)
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The header value (`00-<trace>-<span>-<flags>`, 55 bytes), formatted without `fmt`
    /// because it is on every request's path.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut buf = [b'-'; 55];
        buf[0] = b'0';
        buf[1] = b'0';
        hex_into(&mut buf[3..35], self.trace_id);
        hex_into(&mut buf[36..52], self.span_id as u128);
        hex_into(&mut buf[53..55], self.flags as u128);
        http::HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a valid header value")
    }
}

/// Writes the low `out.len()` hex digits of `v` into `out`, lowercase, most significant first.
fn hex_into(out: &mut [u8], mut v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert_eq!(p.header_value(), EXAMPLE);
        let small = TraceParent {
            trace_id: 1,
            span_id: 2,
            flags: 0,
        };
        assert_eq!(
            small.header_value(),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
    }

    #[test]
    fn refuses_invalid_headers() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f35-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn continues_or_starts() {
        let c = TraceParent::continue_or_start(Some(EXAMPLE));
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(c.span_id, 0x00f067aa0ba902b7);
        let n = TraceParent::continue_or_start(Some("garbage"));
        assert_ne!(n.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(n.flags, 1);
        assert!(TraceParent::parse(n.header_value().to_str().unwrap()).is_some());
    }
}
