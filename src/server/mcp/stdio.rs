//! `wsbx mcp`'s framing: one JSON-RPC message per line on stdin and stdout.
//!
//! Each line the client sends is checked ([`jsonrpc::check`]) before the SDK reads it: a bad
//! one is answered here, a good one is handed on. The SDK's output and these answers share
//! stdout a whole line at a time. Every buffer is bounded: a line longer than the server's
//! body cap is skipped (and answered), and a client that stops reading stops being read.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;

use super::jsonrpc::{self, Malformed};

/// The in-process pipes between the framing and the SDK.
const PIPE_BYTES: usize = 64 << 10;

/// Bad lines answered in a row before answering stops (until a good one comes): two peers that
/// each answer the other's garbage with garbage would otherwise talk forever. The reason the
/// SDK gives for answering none.
const ANSWERS_IN_A_ROW: u32 = 64;

/// Serves `tools` on stdin and stdout until the client closes its end (or the service ends).
pub(super) async fn serve(tools: super::Tools, max_line: usize) -> std::io::Result<()> {
    use rmcp::ServiceExt as _;
    let (client_end, service_in) = tokio::io::duplex(PIPE_BYTES);
    let (service_out, from_service) = tokio::io::duplex(PIPE_BYTES);
    let (answers, answered) = mpsc::channel(16);
    tokio::spawn(read_client(tokio::io::stdin(), client_end, answers, max_line));
    let writer = tokio::spawn(write_client(from_service, answered, tokio::io::stdout()));
    let running = tools.serve((service_in, service_out)).await.map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    writer.await.map_err(std::io::Error::other)?
}

/// What [`read_line`] read.
#[derive(Debug, PartialEq)]
enum Line {
    /// A line (without its newline) in the buffer; the last one may lack it.
    Read,
    /// A line longer than the cap, skipped to its end.
    TooLong,
    End,
}

/// Reads the client's lines and hands each good one to the SDK; answers the bad ones. Ends at
/// the end of input, which the SDK then sees.
async fn read_client(input: impl AsyncRead + Unpin, mut to_service: DuplexStream, answers: mpsc::Sender<String>, max_line: usize) {
    let mut input = BufReader::with_capacity(PIPE_BYTES, input);
    let mut line = Vec::new();
    let mut in_a_row = 0;
    loop {
        let bad = match read_line(&mut input, &mut line, max_line).await {
            Ok(Line::End) => return,
            Err(e) => {
                tracing::warn!("reading the MCP client's input: {e}");
                return;
            }
            Ok(Line::TooLong) => Malformed::too_large(max_line),
            Ok(Line::Read) => {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                match jsonrpc::check(&line) {
                    Err(bad) if !bad.is_notification() => bad,
                    _ => {
                        in_a_row = 0;
                        line.push(b'\n');
                        if to_service.write_all(&line).await.is_err() {
                            return; // the service has ended
                        }
                        continue;
                    }
                }
            }
        };
        in_a_row += 1;
        if in_a_row == ANSWERS_IN_A_ROW {
            tracing::warn!("{ANSWERS_IN_A_ROW} malformed MCP messages in a row: not answering more until a good one");
        }
        if in_a_row <= ANSWERS_IN_A_ROW && answers.send(bad.answer()).await.is_err() {
            return;
        }
    }
}

/// Reads one line of at most `max` bytes into `line` (emptied first, newline dropped); a longer
/// one is consumed without being kept.
async fn read_line(input: &mut (impl AsyncBufRead + Unpin), line: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(match () {
                () if too_long => Line::TooLong,
                () if line.is_empty() => Line::End,
                () => Line::Read,
            });
        }
        let end = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..end.unwrap_or(available.len())];
        if !too_long && line.len() + chunk.len() > max {
            too_long = true;
            *line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        let used = end.map_or(chunk.len(), |end| end + 1);
        input.consume(used);
        if end.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

/// Writes the SDK's lines and the framing's answers to the client, whole lines at a time,
/// until the SDK's output ends.
async fn write_client(from_service: DuplexStream, mut answered: mpsc::Receiver<String>, mut out: impl AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut from_service = BufReader::with_capacity(PIPE_BYTES, from_service);
    // Kept across iterations: a read cut short by an answer resumes where it stopped.
    let mut line = Vec::new();
    let mut answering = true;
    loop {
        tokio::select! {
            read = from_service.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    break;
                }
                out.write_all(&line).await?;
                line.clear();
            }
            answer = answered.recv(), if answering => match answer {
                Some(answer) => out.write_all(format!("{answer}\n").as_bytes()).await?,
                None => answering = false,
            },
        }
        out.flush().await?;
    }
    while let Ok(answer) = answered.try_recv() {
        out.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        // A tiny buffer: lines arrive in many pieces.
        let mut input = BufReader::with_capacity(3, input);
        let mut line = Vec::new();
        let mut seen = Vec::new();
        loop {
            let read = read_line(&mut input, &mut line, max).await.unwrap();
            if read == Line::End {
                return seen;
            }
            seen.push((read, line.clone()));
        }
    }

    #[tokio::test]
    async fn lines_are_read_whole_and_long_ones_skipped() {
        let seen = lines(b"abc\n\nlong line here\nxyz\ntail", 8).await;
        assert_eq!(
            seen,
            vec![
                (Line::Read, b"abc".to_vec()),
                (Line::Read, Vec::new()),
                (Line::TooLong, Vec::new()),
                (Line::Read, b"xyz".to_vec()),
                (Line::Read, b"tail".to_vec()),
            ]
        );
        assert_eq!(lines(b"0123456789", 4).await, vec![(Line::TooLong, Vec::new())]);
    }

    #[tokio::test]
    async fn bad_lines_are_answered_good_ones_handed_on_and_a_storm_is_cut_short() {
        let good = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let mut input = format!("not json\n{good}\n");
        input.push_str(&"x\n".repeat(200));
        input.push_str(good);
        let (client_end, mut service_in) = tokio::io::duplex(1 << 20);
        let (answers, mut answered) = mpsc::channel(1000);
        read_client(input.as_bytes(), client_end, answers, 1024).await;
        let mut handed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut service_in, &mut handed).await.unwrap();
        assert_eq!(handed, format!("{good}\n{good}\n"));
        let mut count = 0;
        while let Ok(answer) = answered.try_recv() {
            assert!(answer.contains("-32700"), "{answer}");
            count += 1;
        }
        assert_eq!(count, 1 + ANSWERS_IN_A_ROW);
    }
}
