//! Newline-delimited framing for stdio, and the one change the proxy ever
//! makes to a message's bytes.
//!
//! MCP's stdio transport forbids newlines inside a message. A message that
//! arrived over HTTP may be pretty-printed; JSON allows raw `\n`/`\r` only as
//! whitespace between tokens (inside strings they must be escaped), so
//! replacing them with spaces never changes what the message means.

use bytes::{Bytes, BytesMut};

/// The message's bytes with any raw `\r`/`\n` replaced by spaces. Returns the
/// same buffer (no copy) when there are none, which is the common case.
pub fn single_line(bytes: &Bytes) -> Bytes {
    if !bytes.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return bytes.clone();
    }
    let mut out = BytesMut::from(&bytes[..]);
    for b in out.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_json_becomes_one_line_with_the_same_meaning() {
        let pretty = Bytes::from_static(b"{\n  \"a\": \"x\\ny\"\r\n}");
        let line = single_line(&pretty);
        assert!(!line.contains(&b'\n'));
        let a: serde_json::Value = serde_json::from_slice(&pretty).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(a, b);
        let plain = Bytes::from_static(b"{}");
        assert_eq!(single_line(&plain).as_ptr(), plain.as_ptr());
    }
}
