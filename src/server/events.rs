//! Server-Sent Events for the exec routes (`Accept: text/event-stream`): `event: stdout` /
//! `event: stderr` with `data: {"text": "..."}` as the guest writes, then one `event: result`
//! whose data is the result object (or `event: error` with `{"error"}` if the run failed to
//! run at all).
//!
//! A slow client never slows the guest: output waits in a [`Feed`] until the client takes it.
//! The feed holds only what the result will hold anyway (output under `max_output_bytes`), so a
//! client that reads nothing costs at most that much memory; consecutive pieces of one stream
//! are merged, so many tiny writes are not many queued messages. A client that disconnects
//! stops receiving; its run goes on to its end (its limits bound it) and its scratch directory is
//! removed then, as for a client that leaves a plain request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream as FuturesStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::ApiError;
use crate::request::{OutputListener, Stream};
use crate::result::ExecResult;

/// Output written by a guest and not yet sent to the client.
#[derive(Default)]
pub(super) struct Feed {
    pending: Mutex<VecDeque<(Stream, Vec<u8>)>>,
    ready: Notify,
}

impl Feed {
    /// A feed and the listener that fills it, for the run's request.
    pub(super) fn new() -> (Arc<Feed>, OutputListener) {
        let feed = Arc::new(Feed::default());
        let filler = feed.clone();
        let listener = OutputListener::new(move |stream, bytes| {
            let mut pending = filler.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.back_mut() {
                Some((last, buffer)) if *last == stream => buffer.extend_from_slice(bytes),
                _ => pending.push_back((stream, bytes.to_vec())),
            }
            drop(pending);
            filler.ready.notify_one();
        });
        (feed, listener)
    }

    /// Moves what is pending into `events`, as text: a UTF-8 sequence split between two writes
    /// waits in `partial` for its end.
    fn drain(&self, events: &mut VecDeque<Event>, partial: &mut Partial) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (stream, bytes) in pending {
            if let Some(text) = partial.text(stream, bytes) {
                events.push_back(output_event(stream, &text));
            }
        }
    }
}

/// The incomplete UTF-8 sequence at the end of each stream so far.
#[derive(Default)]
struct Partial {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Partial {
    fn of(&mut self, stream: Stream) -> &mut Vec<u8> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// `bytes` after what was held back, as text, holding back an incomplete sequence at the end.
    fn text(&mut self, stream: Stream, bytes: Vec<u8>) -> Option<String> {
        let held = self.of(stream);
        held.extend_from_slice(&bytes);
        let cut = match std::str::from_utf8(held) {
            Ok(_) => held.len(),
            // An incomplete sequence at the very end: keep it for the next piece.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => held.len(),
        };
        let rest = held.split_off(cut);
        let text = String::from_utf8_lossy(held).into_owned();
        *held = rest;
        (!text.is_empty()).then_some(text)
    }

    /// What is still held back, at the end of the run.
    fn flush(&mut self, events: &mut VecDeque<Event>) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let held = std::mem::take(self.of(stream));
            if !held.is_empty() {
                events.push_back(output_event(stream, &String::from_utf8_lossy(&held)));
            }
        }
    }
}

fn output_event(stream: Stream, text: &str) -> Event {
    Event::default().event(stream.as_str()).data(serde_json::json!({ "text": text }).to_string())
}

/// The event stream of a run: its output as it comes from `feed`, then its result.
///
/// A client that goes away before the result kills the run (`cancel`): its stream is dropped.
pub(super) fn response(
    feed: Arc<Feed>,
    run: JoinHandle<Result<ExecResult, ApiError>>,
    cancel: super::KillOnDrop,
) -> Sse<impl FuturesStream<Item = Result<Event, Infallible>>> {
    struct State {
        feed: Arc<Feed>,
        run: Option<JoinHandle<Result<ExecResult, ApiError>>>,
        events: VecDeque<Event>,
        partial: Partial,
        cancel: super::KillOnDrop,
    }
    let state = State { feed, run: Some(run), events: VecDeque::new(), partial: Partial::default(), cancel };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.events.pop_front() {
                return Some((Ok(event), state));
            }
            let run = state.run.as_mut()?;
            tokio::select! {
                biased;
                () = state.feed.ready.notified() => state.feed.drain(&mut state.events, &mut state.partial),
                ended = run => {
                    state.run = None;
                    state.cancel.disarm();
                    state.feed.drain(&mut state.events, &mut state.partial);
                    state.partial.flush(&mut state.events);
                    let last = match ended {
                        Ok(Ok(result)) => Event::default().event("result").data(serde_json::to_string(&result).unwrap_or_default()),
                        Ok(Err(ApiError { message, .. })) => Event::default().event("error").data(serde_json::json!({ "error": message }).to_string()),
                        Err(e) => Event::default().event("error").data(serde_json::json!({ "error": format!("the run failed: {e}") }).to_string()),
                    };
                    state.events.push_back(last);
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_writes_arrives_whole() {
        let mut partial = Partial::default();
        let euro = "€".as_bytes();
        assert_eq!(partial.text(Stream::Stdout, [b"a".as_slice(), &euro[..1]].concat()), Some("a".into()));
        assert_eq!(partial.text(Stream::Stderr, b"e".to_vec()), Some("e".into()));
        assert_eq!(partial.text(Stream::Stdout, euro[1..].to_vec()), Some("€".into()));
        // Bytes that are not UTF-8 at all are replaced, not held forever.
        assert_eq!(partial.text(Stream::Stdout, vec![0xff, b'x']), Some("\u{fffd}x".into()));
    }
}
