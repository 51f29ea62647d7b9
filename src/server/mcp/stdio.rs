//! `wsbx mcp`'s framing: one JSON-RPC message per line on stdin and stdout.
//!
//! Each line the client sends is checked ([`jsonrpc::check`]) before the SDK reads it: a bad
//! one is answered here, a good one is handed on. The SDK's output and these answers share
//! stdout a whole line at a time.
//!
//! Every buffer is bounded: a line longer than the server's body cap is skipped (and
//! answered), and at most [`MAX_IN_FLIGHT`] requests are handed on before their answers are
//! written — so a client that stops reading stdout stops being read (the SDK would otherwise
//! queue answers without end). An id still in progress cannot be used again: the SDK would
//! forget the first request, which would never be answered.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::de::IgnoredAny;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::{mpsc, Notify};

use super::jsonrpc::{self, Malformed, Message};

/// The in-process pipes between the framing and the SDK.
const PIPE_BYTES: usize = 64 << 10;

/// Bad lines answered in a row before answering stops (until a good one comes): two peers that
/// each answer the other's garbage with garbage would otherwise talk forever. The reason the
/// SDK gives for answering none.
const ANSWERS_IN_A_ROW: u32 = 64;

/// Requests handed to the SDK and not answered yet, at most: past it the client's input waits.
/// (More than the server would run or queue at once anyway.)
const MAX_IN_FLIGHT: usize = 128;

/// The ids of the requests handed to the SDK and not answered yet.
#[derive(Default)]
struct InFlight {
    ids: Mutex<HashSet<String>>,
    /// Told whenever an id leaves.
    left: Notify,
}

impl InFlight {
    fn ids(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters `id`; false when it is in progress already.
    fn enter(&self, id: String) -> bool {
        self.ids().insert(id)
    }

    fn leave(&self, id: &str) {
        if self.ids().remove(id) {
            self.left.notify_one();
        }
    }

    /// Waits until no request is in progress.
    async fn drained(&self) {
        loop {
            let left = self.left.notified();
            if self.ids().is_empty() {
                return;
            }
            left.await;
        }
    }

    /// Forgets every request in progress: their answers can no longer be written.
    fn abandon(&self) {
        self.ids().clear();
        self.left.notify_one();
    }

    /// Waits until fewer than [`MAX_IN_FLIGHT`] requests are in progress.
    async fn room(&self) {
        while self.ids().len() >= MAX_IN_FLIGHT {
            self.left.notified().await;
        }
    }
}

/// Serves `tools` on stdin and stdout until the client closes its end (or the service ends).
pub(super) async fn serve(tools: super::Tools, max_line: usize) -> std::io::Result<()> {
    use rmcp::ServiceExt as _;
    let (client_end, service_in) = tokio::io::duplex(PIPE_BYTES);
    let (service_out, from_service) = tokio::io::duplex(PIPE_BYTES);
    let (answers, answered) = mpsc::channel(16);
    let in_flight = Arc::new(InFlight::default());
    tokio::spawn({
        let in_flight = in_flight.clone();
        async move {
            // At the end of input, the requests in progress are answered before the SDK sees
            // the end (it would wait 5 s for them, then exit without their answers): as a
            // filter finishes its input, `printf '…' | wsbx mcp` gets every answer.
            let to_service = read_client(tokio::io::stdin(), client_end, answers, in_flight.clone(), max_line).await;
            in_flight.drained().await;
            drop(to_service);
        }
    });
    let writer = tokio::spawn(async move {
        let written = write_client(from_service, answered, in_flight.clone(), tokio::io::stdout()).await;
        in_flight.abandon();
        written
    });
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
/// the end of input, returning the SDK's input for the caller to close.
async fn read_client(
    input: impl AsyncRead + Unpin,
    mut to_service: DuplexStream,
    answers: mpsc::Sender<String>,
    in_flight: Arc<InFlight>,
    max_line: usize,
) -> DuplexStream {
    let mut input = BufReader::with_capacity(PIPE_BYTES, input);
    let mut line = Vec::new();
    let mut in_a_row = 0;
    loop {
        in_flight.room().await;
        let bad = match read_line(&mut input, &mut line, max_line).await {
            Ok(Line::End) => return to_service,
            Err(e) => {
                tracing::warn!("reading the MCP client's input: {e}");
                return to_service;
            }
            Ok(Line::TooLong) => Malformed::too_large(max_line),
            Ok(Line::Read) => {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                match jsonrpc::check(&line) {
                    // JSON-RPC answers no notification, even a bad one.
                    Err(bad) if bad.is_notification() => continue,
                    Err(bad) => bad,
                    // The guard enters the id: a request that gets past it is in flight.
                    Ok(Message::Request(id)) if !in_flight.enter(id.clone()) => Malformed::id_in_use(&id),
                    Ok(message) => {
                        if let Message::Cancelled(Some(id)) = &message {
                            // A cancelled request may go unanswered.
                            in_flight.leave(id);
                        }
                        in_a_row = 0;
                        line.push(b'\n');
                        if to_service.write_all(&line).await.is_err() {
                            return to_service; // the service has ended
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
            return to_service;
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
/// until the SDK's output ends. A request whose answer is written leaves `in_flight`.
async fn write_client(
    from_service: DuplexStream,
    mut answered: mpsc::Receiver<String>,
    in_flight: Arc<InFlight>,
    mut out: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
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
                if let Some(id) = answered_id(&line) {
                    in_flight.leave(&id);
                }
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

/// The id (as JSON text) of the request a line of the SDK's output answers; `None` for the
/// SDK's own requests and notifications. Reads only the envelope: the rest of a line (a
/// result with images, say) is skipped, not built.
fn answered_id(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: Option<serde_json::Value>,
        method: Option<IgnoredAny>,
    }
    let envelope: Envelope = serde_json::from_slice(line).ok()?;
    match (envelope.id, envelope.method) {
        (Some(id), None) if !id.is_null() => serde_json::to_string(&id).ok(),
        _ => None,
    }
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

    /// Runs the reader over `input` to its end: what it handed on, and what it answered.
    async fn read_all(input: &str, in_flight: Arc<InFlight>) -> (String, Vec<String>) {
        let (client_end, mut service_in) = tokio::io::duplex(1 << 20);
        let (answers, mut answered) = mpsc::channel(1000);
        drop(read_client(input.as_bytes(), client_end, answers, in_flight, 1024).await);
        let mut handed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut service_in, &mut handed).await.unwrap();
        let mut said = Vec::new();
        while let Ok(answer) = answered.try_recv() {
            said.push(answer);
        }
        (handed, said)
    }

    fn ping(id: u32) -> String {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)
    }

    #[tokio::test]
    async fn bad_lines_are_answered_good_ones_handed_on_and_a_storm_is_cut_short() {
        let mut input = format!("not json\n{}\n", ping(1));
        input.push_str(&"x\n".repeat(200));
        input.push_str(&ping(2));
        let (handed, said) = read_all(&input, Arc::default()).await;
        assert_eq!(handed, format!("{}\n{}\n", ping(1), ping(2)));
        assert!(said.iter().all(|answer| answer.contains("-32700")), "{said:?}");
        assert_eq!(said.len(), 1 + ANSWERS_IN_A_ROW as usize);
    }

    #[tokio::test]
    async fn an_id_in_progress_is_refused_until_answered_or_cancelled_and_bad_notifications_are_dropped() {
        let in_flight = Arc::new(InFlight::default());
        let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
        let bad_note = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":5}"#;
        let input = [ping(1), ping(1), bad_note.to_owned(), cancel.to_owned(), ping(1)].join("\n");
        let (handed, said) = read_all(&input, in_flight.clone()).await;
        assert_eq!(handed, format!("{}\n{cancel}\n{}\n", ping(1), ping(1)));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains(r#""id":1"#) && said[0].contains("-32600"), "{said:?}");
        // Its answer written, the id is free again.
        assert_eq!(answered_id(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).as_deref(), Some("1"));
        assert_eq!(answered_id(br#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#), None);
        in_flight.leave("1");
        assert!(in_flight.ids().is_empty());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_answers_is_not_read_past_the_in_flight_cap() {
        let in_flight = Arc::new(InFlight::default());
        let input: Vec<String> = (0..MAX_IN_FLIGHT as u32 + 50).map(ping).collect();
        let input = input.join("\n");
        let reading = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { read_all(&input, in_flight).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!reading.is_finished(), "read past the cap with nothing answered");
        assert_eq!(in_flight.ids().len(), MAX_IN_FLIGHT);
        for id in 0..60 {
            in_flight.leave(&id.to_string());
        }
        let (handed, said) = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await.expect("reads on").unwrap();
        assert_eq!(handed.lines().count(), MAX_IN_FLIGHT + 50);
        assert!(said.is_empty());
    }
}
