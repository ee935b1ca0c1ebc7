//! Reading newline-delimited messages with a size limit, for both stdio
//! directions. A line over the limit is consumed and reported, never
//! buffered whole, so one oversized message cannot exhaust memory.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What one read produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A line (with its newline, if any) is in the buffer.
    Line,
    /// A line over the limit was skipped.
    TooLong,
    /// End of input.
    Eof,
}

/// Reads up to and including `\n`, keeping at most `limit` bytes.
pub(crate) async fn read_line_limited(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<LineRead> {
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (used, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            // The newline (and a possible \r) does not count against the limit.
            if line.len() + used > limit.saturating_add(2) {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buf[..used]);
            }
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_and_reading_goes_on() {
        let input: &[u8] = b"short\nthis line is too long\nok\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        loop {
            line.clear();
            match read_line_limited(&mut reader, &mut line, 8).await.unwrap() {
                LineRead::Eof => break,
                LineRead::TooLong => seen.push("<too long>".to_owned()),
                LineRead::Line => seen.push(String::from_utf8(line.clone()).unwrap()),
            }
        }
        assert_eq!(seen, vec!["short\n", "<too long>", "ok\n", "last"]);
    }
}
