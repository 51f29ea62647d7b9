//! The answers the MCP SDK leaves out: a client's bytes that are not JSON get `-32700 Parse
//! error`, and JSON that is not a JSON-RPC message gets `-32600 Invalid Request` (or `-32602
//! Invalid params` when only the params are wrong), with the request's id when it has one, as
//! JSON-RPC 2.0 §5 asks. A client then always learns why, and never waits on an id.
//!
//! `rmcp` drops unparsable lines on stdio, answers other bad lines (notifications too) without
//! an id, takes a standard method with params it cannot read for an unknown one, and answers
//! bad bodies with a plain-text `415` over HTTP.

use rmcp::model::{ClientJsonRpcMessage, ClientNotification, ClientRequest};
use serde_json::Value;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

/// A client message the MCP service cannot take, and the error response it gets.
#[derive(Debug, PartialEq)]
pub(super) struct Malformed {
    code: i64,
    /// The request's id when it has a usable one, else `null` (JSON-RPC 2.0 §5).
    id: Value,
    message: String,
    /// A notification (a method and no id): JSON-RPC answers none, so a bad one is dropped
    /// unanswered on stdio (the SDK would answer it, without an id).
    notification: bool,
}

/// A well-formed message, as far as the framing needs to know it.
#[derive(Debug, PartialEq)]
pub(super) enum Message {
    /// A request, with its id as JSON text (`7`, `"a"`): what its response will carry.
    Request(String),
    /// `notifications/cancelled` for the request with this id (as JSON text), if it names one.
    Cancelled(Option<String>),
    /// Anything else: other notifications, responses and errors from the client.
    Other,
}

/// The client requests of MCP whose params the SDK reads into a type of its own: one of these
/// that it could read only as a custom request had params it could not read.
const STANDARD_REQUESTS: &[&str] = &[
    "initialize",
    "ping",
    "completion/complete",
    "logging/setLevel",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "tools/call",
    "tools/list",
];

impl Malformed {
    /// A message longer than the `max` bytes the server reads.
    pub(super) fn too_large(max: usize) -> Self {
        Self::invalid(Value::Null, format!("Invalid Request: the message is larger than {max} bytes"))
    }

    /// A request whose id (JSON text) is the id of a request still in progress.
    pub(super) fn id_in_use(id: &str) -> Self {
        let id = serde_json::from_str(id).unwrap_or(Value::Null);
        Self::invalid(id, "Invalid Request: this id belongs to a request still in progress".to_owned())
    }

    fn invalid(id: Value, message: String) -> Self {
        Self { code: INVALID_REQUEST, id, message, notification: false }
    }

    /// Whether it is a notification, which gets no answer (see [`Malformed::notification`]).
    pub(super) fn is_notification(&self) -> bool {
        self.notification
    }

    /// The error response, as one line of JSON (no newline).
    pub(super) fn answer(&self) -> String {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": {"code": self.code, "message": self.message},
        })
        .to_string()
    }
}

/// Checks one message the way the SDK will read it (a leading byte order mark and a trailing
/// carriage return are ignored, as the SDK ignores them).
///
/// A well-formed message costs one parse, as it would anyway; only a bad one is looked at again
/// to say what is wrong with it.
pub(super) fn check(bytes: &[u8]) -> Result<Message, Malformed> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let shape_error = match serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
        Ok(message) => return read(message),
        Err(e) => e,
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Malformed {
        code: PARSE_ERROR,
        id: Value::Null,
        message: format!("Parse error: {e}"),
        notification: false,
    })?;
    let Some(object) = value.as_object() else {
        let why = if value.is_array() { "batches are not supported, send one message at a time" } else { "a message is a JSON object" };
        return Err(Malformed::invalid(Value::Null, format!("Invalid Request: {why}")));
    };
    // MCP ids are strings or integers; a fraction or a number past 64 bits cannot be echoed
    // back exactly.
    let id = object.get("id").filter(|id| id.is_string() || id.is_i64() || id.is_u64()).cloned().unwrap_or(Value::Null);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Malformed::invalid(id, r#"Invalid Request: "jsonrpc" must be "2.0""#.to_owned()));
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return Err(Malformed::invalid(id, format!("Invalid Request: {shape_error}")));
    };
    if !object.contains_key("id") {
        return Err(Malformed { notification: true, ..Malformed::invalid(id, format!("Invalid Request: {shape_error}")) });
    }
    if id.is_null() {
        return Err(Malformed::invalid(id, r#"Invalid Request: "id" must be a string or an integer"#.to_owned()));
    }
    // Envelope, method and id are well formed, and the SDK takes any method name (an unknown one
    // gets -32601 from it): what it could not read are the params.
    Err(Malformed { code: INVALID_PARAMS, id, message: format!("Invalid params for {method}: {shape_error}"), notification: false })
}

/// What the framing needs of a message the SDK reads.
fn read(message: ClientJsonRpcMessage) -> Result<Message, Malformed> {
    let key = |id: &rmcp::model::RequestId| serde_json::to_string(id).unwrap_or_default();
    Ok(match message {
        ClientJsonRpcMessage::Request(request) => {
            if let ClientRequest::CustomRequest(custom) = &request.request {
                // The SDK takes a standard method with params it cannot read as a custom one,
                // then answers "method not found": say what is wrong instead.
                if STANDARD_REQUESTS.contains(&custom.method.as_str()) {
                    let id = serde_json::to_value(&request.id).unwrap_or(Value::Null);
                    let message = format!("Invalid params for {}: not what the method takes", custom.method);
                    return Err(Malformed { code: INVALID_PARAMS, id, message, notification: false });
                }
            }
            Message::Request(key(&request.id))
        }
        ClientJsonRpcMessage::Notification(note) => match &note.notification {
            ClientNotification::CancelledNotification(cancelled) => Message::Cancelled(cancelled.params.request_id.as_ref().map(key)),
            _ => Message::Other,
        },
        _ => Message::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str) -> Value {
        serde_json::from_str(&check(line.as_bytes()).expect_err(line).answer()).unwrap()
    }

    #[test]
    fn well_formed_messages_pass() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"ping\"}\r",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"no/such/method"}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
        ] {
            assert!(check(line.as_bytes()).is_ok(), "{line}");
        }
    }

    #[test]
    fn each_kind_of_bad_message_gets_its_code_and_id() {
        for (line, code, id) in [
            ("this is not json", PARSE_ERROR, Value::Null),
            (r#"{"jsonrpc": "2.0", "id":"#, PARSE_ERROR, Value::Null),
            ("\u{0}\u{ff}", PARSE_ERROR, Value::Null),
            ("[1, 2]", INVALID_REQUEST, Value::Null),
            ("42", INVALID_REQUEST, Value::Null),
            (r#"{"foo": 1}"#, INVALID_REQUEST, Value::Null),
            (r#"{"jsonrpc":"1.0","id":4,"method":"ping"}"#, INVALID_REQUEST, Value::from(4)),
            (r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#, INVALID_REQUEST, Value::Null),
            (r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":5}"#, INVALID_PARAMS, Value::from(5)),
            (r#"{"jsonrpc":"2.0","id":"x","method":"ping","params":"p"}"#, INVALID_PARAMS, Value::from("x")),
            (r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":5}}"#, INVALID_PARAMS, Value::from(6)),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#, INVALID_REQUEST, Value::Null),
            (r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"tools/list"}"#, INVALID_REQUEST, Value::Null),
        ] {
            let seen = answer(line);
            assert_eq!(seen["jsonrpc"], "2.0");
            assert_eq!(seen["error"]["code"], code, "{line}: {seen}");
            assert_eq!(seen["id"], id, "{line}: {seen}");
        }
    }

    #[test]
    fn requests_and_cancellations_are_told_by_their_ids() {
        let read = |line: &str| check(line.as_bytes()).unwrap();
        assert_eq!(read(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#), Message::Request("7".into()));
        assert_eq!(read(r#"{"jsonrpc":"2.0","id":"7","method":"tools/list"}"#), Message::Request("\"7\"".into()));
        let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}"#;
        assert_eq!(read(cancel), Message::Cancelled(Some("7".into())));
        assert_eq!(read(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#), Message::Other);
        let reused: Value = serde_json::from_str(&Malformed::id_in_use("\"7\"").answer()).unwrap();
        assert_eq!((reused["id"].as_str(), reused["error"]["code"].as_i64()), (Some("7"), Some(INVALID_REQUEST)));
    }

    #[test]
    fn a_bad_notification_is_known_as_one() {
        let bad = check(br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":5}"#).expect_err("params");
        assert!(bad.is_notification());
        assert!(!check(b"nope").expect_err("not json").is_notification());
    }
}
