//! `Payload`: the JSON of an event or reply, encoded once and shared by every emit that
//! carries it.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

/// A JSON payload encoded once and shared by every emit that carries it.
#[derive(Clone, Debug)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// Encodes `value` once.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Self {
        let json = serde_json::to_string(value).expect("a serde_json::Value always serialises");
        Self::from_json(json)
    }

    /// Wraps text that is already valid JSON. Invalid JSON becomes `null`.
    pub fn from_json(json: String) -> Self {
        let raw = RawValue::from_string(json)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        Self(Arc::from(raw))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// Parses the payload back into a value (tests and diagnostics).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
