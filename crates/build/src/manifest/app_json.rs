//! The subset of Heroku's app.json that berth uses: `healthchecks`, `env`, `scripts.postdeploy`
//! and `formation`.
//!
//! app.json files in the wild carry many more keys (name, description, logo, buildpacks,
//! addons, …), so unknown keys are ignored at every level; a known key with the wrong type is
//! still an error, with its line and column.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::values::{Command, EnvKey, HealthPath, ProcName, Replicas};
use super::{EnvDecl, ManifestError};

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AppJson {
    #[serde(default)]
    healthchecks: BTreeMap<String, Vec<Check>>,
    #[serde(default)]
    env: BTreeMap<EnvKey, EnvValue>,
    #[serde(default)]
    scripts: Scripts,
    #[serde(default)]
    formation: BTreeMap<ProcName, FormationEntry>,
}

/// One check of Heroku's `healthchecks` (`type`, `name`, `attempts`, `delay` are accepted and
/// not used: berth keeps probing until `timeout` for the whole start-up).
#[derive(Debug, Deserialize)]
struct Check {
    path: Option<HealthPath>,
    /// Seconds.
    timeout: Option<Seconds>,
}

#[derive(Debug, Clone, Copy)]
struct Seconds(u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(de::Error::custom("timeout must be at least 1 second")),
            n => Ok(Seconds(n)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Scripts {
    postdeploy: Option<Command>,
}

#[derive(Debug, Deserialize)]
struct FormationEntry {
    quantity: Option<Replicas>,
}

/// `"KEY": "default"` or `"KEY": {"description": …, "value": …, "generator": "secret",
/// "required": …}`. A hand-written visitor instead of `#[serde(untagged)]` so a wrong field
/// type inside the object is reported as such, not as "did not match any variant".
#[derive(Debug)]
enum EnvValue {
    Plain(String),
    Full(EnvFull),
}

#[derive(Debug, Deserialize)]
struct EnvFull {
    description: Option<String>,
    value: Option<String>,
    generator: Option<Generator>,
    required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Generator {
    Secret,
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string (the default value) or an object with description, value, generator and required")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                EnvFull::deserialize(de::value::MapAccessDeserializer::new(map)).map(EnvValue::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// What app.json contributes to the [`super::AppSpec`], already checked.
#[derive(Debug, Default)]
pub(crate) struct AppJsonSettings {
    pub health_path: Option<String>,
    pub health_timeout_secs: Option<u64>,
    pub env: Vec<EnvDecl>,
    pub postdeploy: Option<String>,
    pub formation: BTreeMap<String, u32>,
}

pub(crate) fn parse(text: &str) -> Result<AppJsonSettings, ManifestError> {
    let raw: AppJson = serde_json::from_str(text).map_err(|e| {
        // serde_json's Display appends " at line L column C"; the position goes in our prefix.
        let msg = e.to_string();
        let reason = msg
            .rsplit_once(" at line ")
            .map_or(msg.as_str(), |(r, _)| r)
            .to_string();
        let (line, col) = match e.line() {
            0 => (None, None),
            // serde_json reports column 0 when nothing was read on the line (an empty file).
            l => (Some(l), Some(e.column()).filter(|&c| c > 0)),
        };
        ManifestError::at("app.json", line, col, reason)
    })?;

    let web_check = raw.healthchecks.get("web").and_then(|c| c.first());
    let env = raw
        .env
        .into_iter()
        .map(|(EnvKey(key), v)| match v {
            EnvValue::Plain(s) => EnvDecl {
                key,
                default: Some(s),
                generator_secret: false,
                required: true,
                description: None,
            },
            EnvValue::Full(f) => EnvDecl {
                key,
                default: f.value,
                generator_secret: matches!(f.generator, Some(Generator::Secret)),
                // Heroku's default: a variable must end up with a value unless it says otherwise.
                required: f.required.unwrap_or(true),
                description: f.description,
            },
        })
        .collect();
    Ok(AppJsonSettings {
        health_path: web_check.and_then(|c| c.path.clone()).map(|p| p.0),
        health_timeout_secs: web_check.and_then(|c| c.timeout).map(|t| t.0),
        env,
        postdeploy: raw.scripts.postdeploy.map(|c| c.0),
        formation: raw
            .formation
            .into_iter()
            .filter_map(|(name, f)| f.quantity.map(|q| (name.0, q.0)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_with_unknown_keys() {
        let text = r#"{
  "name": "Small Sharp Tool",
  "description": "This app does one little thing, and does it well.",
  "keywords": ["productivity", "HTML5", "scalpel"],
  "repository": "https://github.com/jane-doe/small-sharp-tool",
  "logo": "https://small-sharp-tool.com/logo.svg",
  "buildpacks": [{"url": "heroku/python"}],
  "addons": ["heroku-postgresql"],
  "success_url": "/welcome",
  "scripts": {"postdeploy": "bundle exec rake bootstrap", "pr-predestroy": "x"},
  "env": {
    "SECRET_TOKEN": {"description": "A secret key", "generator": "secret"},
    "WEB_CONCURRENCY": {"description": "workers", "value": "5", "required": false, "order": 1},
    "GREETING": "hello"
  },
  "formation": {"web": {"quantity": 2, "size": "standard-1X"}, "worker": {"size": "eco"}},
  "healthchecks": {
    "web": [
      {"type": "startup", "name": "web check", "path": "/health", "attempts": 3, "delay": 0, "timeout": 5},
      {"type": "startup", "path": "/other", "timeout": 9}
    ],
    "worker": [{"path": "/w"}]
  }
}"#;
        let s = parse(text).unwrap();
        assert_eq!(s.health_path.as_deref(), Some("/health"));
        assert_eq!(s.health_timeout_secs, Some(5));
        assert_eq!(s.postdeploy.as_deref(), Some("bundle exec rake bootstrap"));
        assert_eq!(s.formation, BTreeMap::from([("web".to_string(), 2)]));
        assert_eq!(
            s.env,
            vec![
                EnvDecl {
                    key: "GREETING".into(),
                    default: Some("hello".into()),
                    generator_secret: false,
                    required: true,
                    description: None,
                },
                EnvDecl {
                    key: "SECRET_TOKEN".into(),
                    default: None,
                    generator_secret: true,
                    required: true,
                    description: Some("A secret key".into()),
                },
                EnvDecl {
                    key: "WEB_CONCURRENCY".into(),
                    default: Some("5".into()),
                    generator_secret: false,
                    required: false,
                    description: Some("workers".into()),
                },
            ]
        );
    }

    #[test]
    fn empty_object_is_fine() {
        let s = parse("{}").unwrap();
        assert!(s.env.is_empty() && s.health_path.is_none() && s.formation.is_empty());
    }

    #[test]
    fn bad_types_carry_line_and_column() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("{\n  \"env\": []\n}", 2, 9, "invalid type: sequence"),
            (
                "{\n  \"env\": {\n    \"A\": 5\n  }\n}",
                3,
                10,
                "invalid type: integer `5`",
            ),
            (
                "{\"env\": {\"A\": {\"required\": \"yes\"}}}",
                1,
                32,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                "{\"env\": {\"A\": {\"generator\": \"uuid\"}}}",
                1,
                34,
                "unknown variant `uuid`, expected `secret`",
            ),
            (
                "{\"env\": {\"1A\": \"x\"}}",
                1,
                13,
                "invalid environment variable name",
            ),
            (
                "{\"scripts\": {\"postdeploy\": 3}}",
                1,
                28,
                "invalid type: integer `3`",
            ),
            (
                "{\"scripts\": {\"postdeploy\": \"  \"}}",
                1,
                32,
                "command is empty",
            ),
            (
                "{\"formation\": {\"web\": {\"quantity\": 101}}}",
                1,
                39,
                "more than the maximum",
            ),
            (
                "{\"formation\": {\"web\": {\"quantity\": -1}}}",
                1,
                37,
                "invalid value",
            ),
            (
                "{\"formation\": {\"Web\": {}}}",
                1,
                20,
                "invalid process name",
            ),
            (
                "{\"healthchecks\": {\"web\": [{\"path\": \"health\"}]}}",
                1,
                44,
                "must start with '/'",
            ),
            (
                "{\"healthchecks\": {\"web\": [{\"timeout\": 0}]}}",
                1,
                40,
                "at least 1 second",
            ),
            (
                "{\"healthchecks\": {\"web\": {}}}",
                1,
                25,
                "invalid type: map",
            ),
            ("{\"env\": {}", 1, 10, "EOF while parsing"),
            ("", 1, 0, "EOF while parsing"),
        ];
        for (text, line, col, reason) in cases {
            let err = parse(text).unwrap_err();
            let want_col = if *col == 0 { None } else { Some(*col) };
            assert_eq!(
                (err.line, err.col),
                (Some(*line), want_col),
                "{text}: {err}"
            );
            assert!(err.reason.contains(reason), "{text}: {err}");
            assert!(!err.reason.contains(" at line "), "{err}");
            assert!(
                err.to_string().starts_with(&format!("app.json:{line}:")),
                "{err}"
            );
        }
    }
}
