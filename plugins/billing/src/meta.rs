//! Editing a JSON-RPC result without disturbing it: adding an entry under
//! `_meta`, or rewriting the `tools` list. Only the top level of the result
//! is taken apart (in its original key order); everything else keeps its
//! original bytes. A response that is not an object result is left as is.

use std::fmt;

use mcp_meter_plugin::McpResponse;
use mcp_meter_plugin::jsonrpc::Message;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The `_meta` key of everything mcp-meter adds to a result.
pub const META_KEY: &str = "mcp-meter/billing";

/// A JSON object's top level in its original order, values untouched.
pub(crate) struct TopLevel(pub(crate) Vec<(String, Box<RawValue>)>);

impl TopLevel {
    /// The top level of `raw`, if it is an object.
    pub(crate) fn parse(raw: &RawValue) -> Option<Self> {
        serde_json::from_str(raw.get()).ok()
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Replaces (or appends) `key`.
    pub(crate) fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Sets `_meta[entry] = value`, keeping the other `_meta` entries.
    pub(crate) fn set_meta(&mut self, entry: &str, value: Value) -> Option<()> {
        let mut meta = match self.get("_meta") {
            Some(raw) => match serde_json::from_str::<Value>(raw.get()).ok()? {
                Value::Object(map) => map,
                _ => return None,
            },
            None => serde_json::Map::new(),
        };
        meta.insert(entry.to_owned(), value);
        let raw = serde_json::value::to_raw_value(&meta).ok()?;
        self.set("_meta", raw);
        Some(())
    }

    /// Serializes back.
    pub(crate) fn to_raw(&self) -> Option<Box<RawValue>> {
        serde_json::value::to_raw_value(self).ok()
    }
}

impl Serialize for TopLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(TopLevel(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// Rewrites a result response's top level with `edit`; any other response
/// (or an edit that gives up) comes back unchanged.
pub(crate) fn edit_result(
    response: McpResponse,
    edit: impl FnOnce(&mut TopLevel) -> Option<()>,
) -> McpResponse {
    let (Some(id), Some(result)) = (response.message.id(), response.message.result()) else {
        return response;
    };
    let Some(mut top) = TopLevel::parse(result) else {
        return response;
    };
    if edit(&mut top).is_none() {
        return response;
    }
    let Some(raw) = top.to_raw() else {
        return response;
    };
    McpResponse {
        message: Message::result_response(id, &raw),
        extensions: response.extensions,
    }
}

/// Adds `_meta["mcp-meter/billing"] = value` to a result.
pub(crate) fn with_billing_meta(response: McpResponse, value: Value) -> McpResponse {
    edit_result(response, |top| top.set_meta(META_KEY, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(text: &str) -> McpResponse {
        McpResponse::new(Message::parse(text.to_owned().into()).unwrap())
    }

    fn text(r: &McpResponse) -> String {
        String::from_utf8(r.message.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn meta_is_added_and_the_rest_keeps_its_bytes_and_order() {
        let r = response(
            r#"{"jsonrpc":"2.0","id":"a","result":{"z":1,"content":[{"type":"text","text":"hi  there"}],"_meta":{"other":true}}}"#,
        );
        let r = with_billing_meta(r, json!({"charged": 5}));
        assert_eq!(
            text(&r),
            r#"{"jsonrpc":"2.0","id":"a","result":{"z":1,"content":[{"type":"text","text":"hi  there"}],"_meta":{"mcp-meter/billing":{"charged":5},"other":true}}}"#
        );
    }

    #[test]
    fn errors_and_non_objects_are_left_alone() {
        for t in [
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":[1,2]}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":"not an object"}}"#,
        ] {
            assert_eq!(text(&with_billing_meta(response(t), json!(1))), t);
        }
    }
}
