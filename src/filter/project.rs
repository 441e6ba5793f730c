//! The projection of a message's JSON: one pass of serde's deserializer that builds only the
//! fields a filter's patterns name ([`Projection`]), skipping the rest unbuilt, and puts
//! dotted keys (`"a.b": 1`) where their path says.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{join_dotted, Projection};

/// `json` with only the parts `projection` names built; everything else is checked and skipped.
pub(super) fn project(json: &str, projection: &Projection) -> Result<Value, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_str(json);
    let out = Project(projection).deserialize(&mut d)?;
    d.end()?;
    Ok(out)
}

/// What a key is to the projection (`Copy`: the per-key path carries nothing to drop).
#[derive(Clone, Copy)]
enum Found<'p> {
    /// A field it names (`None`: needed whole).
    Named(&'p String, &'p Option<Projection>),
    /// A dotted key (`a.b`) whose path the projection names, put in the seed's slot: its
    /// value goes to that path.
    Dotted(Option<&'p Projection>),
    Skip,
}
/// A key's seed: the projection, and where a dotted key is put.
struct Key<'p, 's>(&'p Projection, &'s mut Option<String>);
impl<'de, 'p> DeserializeSeed<'de> for Key<'p, '_> {
    type Value = Found<'p>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}
impl<'p> Visitor<'_> for Key<'p, '_> {
    type Value = Found<'p>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if let Some((name, below)) = self.0.fields.get_key_value(key) {
            return Ok(Found::Named(name, below));
        }
        if !self.0.may_be_dotted_path(key) {
            return Ok(Found::Skip);
        }
        Ok(dotted_key(self.0, key, self.1))
    }
}

/// A dotted key: the projection below its path, as far as the projection names it. Out of
/// line and cold: the check every key of a message goes through stays small.
#[cold]
#[inline(never)]
fn dotted_key<'p>(projection: &'p Projection, key: &str, slot: &mut Option<String>) -> Found<'p> {
    let mut at = projection;
    for segment in key.split('.') {
        match at.fields.get(segment) {
            None => return Found::Skip,
            Some(None) => {
                *slot = Some(key.to_string());
                return Found::Dotted(None);
            }
            Some(Some(below)) => at = below,
        }
    }
    *slot = Some(key.to_string());
    Found::Dotted(Some(at))
}

/// Builds a dotted key's value into `out` under the key as written (joined after the object).
#[cold]
#[inline(never)]
fn take_dotted<'de, A: MapAccess<'de>>(
    map: &mut A,
    out: &mut serde_json::Map<String, Value>,
    key: String,
    below: Option<&Projection>,
) -> Result<(), A::Error> {
    let value = match below {
        Some(below) => map.next_value_seed(Project(below))?,
        None => map.next_value::<Value>()?,
    };
    out.insert(key, value);
    Ok(())
}

struct Project<'p>(&'p Projection);
impl<'de> DeserializeSeed<'de> for Project<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}
impl<'de> Visitor<'de> for Project<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        let mut dotted = false;
        let mut dotted_key: Option<String> = None;
        while let Some(found) = map.next_key_seed(Key(self.0, &mut dotted_key))? {
            match found {
                Found::Named(name, Some(below)) => {
                    out.insert(name.clone(), map.next_value_seed(Project(below))?);
                }
                Found::Named(name, None) => {
                    out.insert(name.clone(), map.next_value::<Value>()?);
                }
                Found::Dotted(below) => {
                    let key = dotted_key.take().expect("a dotted key fills the slot");
                    take_dotted(&mut map, &mut out, key, below)?;
                    dotted = true;
                }
                Found::Skip => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let mut out = Value::Object(out);
        if dotted {
            join_dotted(&mut out);
        }
        Ok(out)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Project(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}
