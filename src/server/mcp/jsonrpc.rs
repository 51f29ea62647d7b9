//! The answers the MCP SDK leaves out: a client's bytes that are not JSON get `-32700 Parse
//! error`, and JSON that is not a JSON-RPC message gets `-32600 Invalid Request` (or `-32602
//! Invalid params` when only the params are wrong), with the request's id when it has one, as
//! JSON-RPC 2.0 §5 asks. A client then always learns why, and never waits on an id.
//!
//! `rmcp` drops unparsable lines on stdio, answers other bad lines without an id, and answers
//! both with a plain-text `415` over HTTP.

use rmcp::model::ClientJsonRpcMessage;
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
    /// A notification (a method and no id): JSON-RPC answers none, so the SDK decides (it
    /// ignores the non-standard ones some clients send).
    notification: bool,
}

impl Malformed {
    /// A message longer than the `max` bytes the server reads.
    pub(super) fn too_large(max: usize) -> Self {
        Self::invalid(Value::Null, format!("Invalid Request: the message is larger than {max} bytes"))
    }

    fn invalid(id: Value, message: String) -> Self {
        Self { code: INVALID_REQUEST, id, message, notification: false }
    }

    /// Whether the SDK should see it anyway (see [`Malformed::notification`]).
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
pub(super) fn check(bytes: &[u8]) -> Result<(), Malformed> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let shape_error = match serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
        Ok(_) => return Ok(()),
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
    let id = object.get("id").filter(|id| id.is_string() || id.is_number()).cloned().unwrap_or(Value::Null);
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
        return Err(Malformed::invalid(id, r#"Invalid Request: "id" must be a string or a number"#.to_owned()));
    }
    // Envelope, method and id are well formed, and the SDK takes any method name (an unknown one
    // gets -32601 from it): what it could not read are the params.
    Err(Malformed { code: INVALID_PARAMS, id, message: format!("Invalid params for {method}: {shape_error}"), notification: false })
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
            assert_eq!(check(line.as_bytes()), Ok(()), "{line}");
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
        ] {
            let seen = answer(line);
            assert_eq!(seen["jsonrpc"], "2.0");
            assert_eq!(seen["error"]["code"], code, "{line}: {seen}");
            assert_eq!(seen["id"], id, "{line}: {seen}");
        }
    }

    #[test]
    fn a_bad_notification_is_left_to_the_sdk() {
        let bad = check(br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":5}"#).expect_err("params");
        assert!(bad.is_notification());
        assert!(!check(b"nope").expect_err("not json").is_notification());
    }
}
