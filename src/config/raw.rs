//! Stage 1: the file as written, mirrored with serde.

use super::*; // a part of `config`: its types, helpers and imports

/// The config file as written: every key optional, unknown keys rejected. Values
/// that stage 2 can reject keep their span, so that their errors carry a line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawConfig {
    #[serde(deserialize_with = "table")]
    pub(super) node: RawNode,
    #[serde(deserialize_with = "table")]
    pub(super) fs: RawFs,
    #[serde(deserialize_with = "table")]
    pub(super) log: RawLog,
    #[serde(deserialize_with = "opt_table")]
    pub(super) replication: Option<RawReplication>,
    #[serde(deserialize_with = "opt_table")]
    pub(super) failover: Option<failover::RawFailover>,
    #[serde(deserialize_with = "table")]
    pub(super) metrics: RawMetrics,
    #[serde(deserialize_with = "table")]
    pub(super) standby: RawStandby,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawReplication {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) peer: Option<Spanned<String>>,
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) peer_cert: Option<Spanned<String>>,
    pub(super) peer_fingerprint: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) keepalive: Option<Spanned<RawDuration>>,
    pub(super) deadtime: Option<Spanned<RawDuration>>,
    pub(super) on_peer_loss: Option<Spanned<String>>,
    pub(super) split_brain: Option<Spanned<String>>,
    pub(super) resync_rate: Option<Spanned<String>>,
}

/// [`table`] for a table that may be absent.
pub(super) fn opt_table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    table(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawNode {
    pub(super) name: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) mountpoint: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawFs {
    pub(super) writeback_cache: Option<bool>,
    pub(super) attr_timeout: Option<Spanned<RawDuration>>,
    pub(super) threads: Option<Spanned<RawInt>>,
    pub(super) checkpoint_interval: Option<Spanned<RawDuration>>,
    pub(super) force_unmount: Option<bool>,
    pub(super) force_unmount_grace: Option<Spanned<RawDuration>>,
    pub(super) suid_dev: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawLog {
    pub(super) level: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawStandby {
    pub(super) serve: Option<Spanned<bool>>,
    pub(super) max_lag: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
}

/// Deserializes a table, and only a table.
///
/// A serde-derived struct also accepts a sequence of its fields in order, so
/// without this `fs = []` would be a valid (empty) `[fs]` and `[[fs]]` would be
/// reported as a wrong value for `fs.writeback_cache`. Use it on every table field.
pub(super) fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(TableOnly(d))
}

/// A deserializer that hands its visitor only maps (see [`table`]).
pub(super) struct TableOnly<D>(pub(super) D);

/// A visitor that accepts only maps, and otherwise reports what it expected.
pub(super) struct MapVisitor<V>(pub(super) V);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TableOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(MapVisitor(v))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, MapVisitor(v))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }
}

/// A duration as written (`"500ms"`, `"1s"`, `"2min"`), parsed in stage 2.
#[derive(Debug)]
pub(super) struct RawDuration(pub(super) String);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string such as "500ms", "1s" or "2min""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// An integer as written; its range is checked in stage 2, so that an out-of-range
/// value gets the same message whatever its size or sign.
#[derive(Debug)]
pub(super) struct RawInt(pub(super) i64);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInt, E> {
                Ok(RawInt(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_i64(V)
    }
}
