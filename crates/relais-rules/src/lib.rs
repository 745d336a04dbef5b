//! Cache rules resolved by specificity (CDN-04, CDN-05).
//!
//! A rule is a scope plus some settings. Each *setting* is resolved on its own: among the rules
//! whose scope matches and which set that setting, the most specific wins. Scopes, from least
//! to most specific: platform default → site default → content-type group → content type →
//! directory (deeper beats shallower) → exact page.
//!
//! Two rules of the same scope that set the same setting are refused when the rule set is built,
//! with a message naming both (in French and English): nothing is ever resolved silently by
//! order.
//!
//! Content-type scopes match the origin's response, so they only take part in decisions made
//! after the response (storing, TTLs, stale windows). Decisions needed before the response
//! (bypass, query string and headers in the cache key) come from path scopes only, and a
//! content-type rule that tries to set one is refused. `cache = false` therefore means
//! *bypass* on a path scope and *do not store* on a content-type scope.
//!
//! This crate is pure: no I/O, no clock. The edge, the API (`explain`) and the extranet share it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Where a rule applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Platform,
    Site,
    /// A named group of content types (`images`, `video`, …).
    Group(String),
    /// One media type, `type/subtype`, lowercase, without parameters.
    ContentType(String),
    /// A directory: a path prefix ending in `/`.
    Dir(String),
    /// One exact path.
    Page(String),
}

impl Scope {
    /// Specificity: higher wins. Directories rank by depth.
    pub fn rank(&self) -> (u8, usize) {
        match self {
            Scope::Platform => (0, 0),
            Scope::Site => (1, 0),
            Scope::Group(_) => (2, 0),
            Scope::ContentType(_) => (3, 0),
            Scope::Dir(d) => (4, d.matches('/').count()),
            Scope::Page(_) => (5, 0),
        }
    }

    fn is_content_scope(&self) -> bool {
        matches!(self, Scope::Group(_) | Scope::ContentType(_))
    }

    fn matches(&self, path: &str, content_type: Option<&str>, groups: &Groups) -> bool {
        match self {
            Scope::Platform | Scope::Site => true,
            Scope::Dir(d) => path.starts_with(d.as_str()),
            Scope::Page(p) => path == p,
            Scope::ContentType(t) => content_type.is_some_and(|ct| ct == t),
            Scope::Group(g) => {
                content_type.is_some_and(|ct| groups.group_of(ct) == Some(g.as_str()))
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Platform => f.write_str("platform default"),
            Scope::Site => f.write_str("site default"),
            Scope::Group(g) => write!(f, "group {g}"),
            Scope::ContentType(t) => write!(f, "content type {t}"),
            Scope::Dir(d) => write!(f, "directory {d}"),
            Scope::Page(p) => write!(f, "page {p}"),
        }
    }
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryMode {
    /// As sent.
    Keep,
    /// Not at all.
    Ignore,
    /// All parameters, sorted (so `?b=1&a=2` and `?a=2&b=1` share an object).
    Sorted,
    /// Only these parameters, sorted.
    Only(Vec<String>),
    /// All but these (a trailing `*` matches a prefix, as in `utm_*`), sorted.
    Drop(Vec<String>),
}

impl QueryMode {
    /// The query string to put in the cache key.
    pub fn apply(&self, query: &str) -> String {
        let params = || query.split('&').filter(|p| !p.is_empty());
        let name = |p: &str| p.split('=').next().unwrap_or("").to_owned();
        let matches = |list: &[String], n: &str| {
            list.iter().any(|pat| match pat.strip_suffix('*') {
                Some(prefix) => n.starts_with(prefix),
                None => n == pat,
            })
        };
        let mut kept: Vec<&str> = match self {
            QueryMode::Keep => return query.to_owned(),
            QueryMode::Ignore => return String::new(),
            QueryMode::Sorted => params().collect(),
            QueryMode::Only(list) => params().filter(|p| matches(list, &name(p))).collect(),
            QueryMode::Drop(list) => params().filter(|p| !matches(list, &name(p))).collect(),
        };
        kept.sort_unstable();
        kept.join("&")
    }
}

/// The settings a rule may set. `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Path scopes: serve through the cache (`true`) or bypass it. Content scopes: store or not.
    pub cache: Option<bool>,
    pub edge_ttl: Option<Duration>,
    /// The `Cache-Control: max-age` sent to browsers.
    pub browser_ttl: Option<Duration>,
    /// `true`: the origin's caching headers win over `edge_ttl`; `false`: the rule wins.
    pub respect_origin: Option<bool>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    pub query: Option<QueryMode>,
    pub key_headers: Option<Vec<String>>,
    pub key_cookies: Option<Vec<String>>,
}

/// Names of the settings, in display order.
pub const SETTINGS: [&str; 9] = [
    "cache",
    "edge_ttl",
    "browser_ttl",
    "respect_origin",
    "stale_while_revalidate",
    "stale_if_error",
    "query",
    "key_headers",
    "key_cookies",
];

/// Settings decided before the response is known.
const REQUEST_TIME: [&str; 3] = ["query", "key_headers", "key_cookies"];

impl Settings {
    fn is_set(&self, name: &str) -> bool {
        self.value(name).is_some()
    }

    /// A setting's value, rendered for people.
    pub fn value(&self, name: &str) -> Option<String> {
        let d = |d: &Option<Duration>| d.map(|d| format!("{}s", d.as_secs()));
        match name {
            "cache" => self.cache.map(|b| b.to_string()),
            "edge_ttl" => d(&self.edge_ttl),
            "browser_ttl" => d(&self.browser_ttl),
            "respect_origin" => self.respect_origin.map(|b| b.to_string()),
            "stale_while_revalidate" => d(&self.stale_while_revalidate),
            "stale_if_error" => d(&self.stale_if_error),
            "query" => self.query.as_ref().map(|q| format!("{q:?}").to_lowercase()),
            "key_headers" => self.key_headers.as_ref().map(|v| v.join(", ")),
            "key_cookies" => self.key_cookies.as_ref().map(|v| v.join(", ")),
            _ => None,
        }
    }

    fn take(&mut self, name: &str, from: &Settings) {
        match name {
            "cache" => self.cache = from.cache,
            "edge_ttl" => self.edge_ttl = from.edge_ttl,
            "browser_ttl" => self.browser_ttl = from.browser_ttl,
            "respect_origin" => self.respect_origin = from.respect_origin,
            "stale_while_revalidate" => self.stale_while_revalidate = from.stale_while_revalidate,
            "stale_if_error" => self.stale_if_error = from.stale_if_error,
            "query" => self.query = from.query.clone(),
            "key_headers" => self.key_headers = from.key_headers.clone(),
            "key_cookies" => self.key_cookies = from.key_cookies.clone(),
            _ => {}
        }
    }
}

/// A rule: an identifier (shown in errors and `explain`), a scope and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub scope: Scope,
    pub settings: Settings,
}

/// Content-type groups: group name → media type patterns (`image/*`, `application/pdf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups(pub BTreeMap<String, Vec<String>>);

impl Default for Groups {
    fn default() -> Self {
        let g = |name: &str, types: &[&str]| {
            (
                name.to_owned(),
                types.iter().map(|t| t.to_string()).collect(),
            )
        };
        Groups(BTreeMap::from([
            g("images", &["image/*"]),
            g(
                "video",
                &[
                    "video/*",
                    "application/vnd.apple.mpegurl",
                    "application/x-mpegurl",
                    "application/dash+xml",
                ],
            ),
            g("audio", &["audio/*"]),
            g(
                "fonts",
                &[
                    "font/*",
                    "application/font-woff",
                    "application/vnd.ms-fontobject",
                ],
            ),
            g(
                "documents",
                &[
                    "application/pdf",
                    "application/msword",
                    "application/rtf",
                    "application/vnd.oasis.opendocument.*",
                    "application/vnd.openxmlformats-officedocument.*",
                    "application/vnd.ms-excel",
                    "application/vnd.ms-powerpoint",
                    "text/csv",
                ],
            ),
            g(
                "scripts-styles",
                &[
                    "text/css",
                    "text/javascript",
                    "application/javascript",
                    "application/json",
                    "application/wasm",
                ],
            ),
            g("html", &["text/html", "application/xhtml+xml"]),
        ]))
    }
}

impl Groups {
    /// The group a media type belongs to (groups are disjoint; the most specific pattern wins).
    pub fn group_of(&self, ct: &str) -> Option<&str> {
        let mut best: Option<(&str, usize)> = None;
        for (name, patterns) in &self.0 {
            for p in patterns {
                let hit = match p.strip_suffix('*') {
                    Some(prefix) => ct.starts_with(prefix),
                    None => ct == p,
                };
                if hit && best.is_none_or(|(_, len)| p.len() > len) {
                    best = Some((name, p.len()));
                }
            }
        }
        best.map(|(n, _)| n)
    }
}

/// Normalises a `Content-Type` value: media type only, lowercase.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A refused rule set: which rule and setting, and why, in French and English.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field, as a path: `rules[2].edge_ttl`.
    pub field: String,
    pub code: &'static str,
    pub fr: String,
    pub en: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.en)
    }
}

/// A validated rule set.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    groups: Groups,
    /// Settings that at least one rule sets (indexes into `SETTINGS`).
    used: [bool; SETTINGS.len()],
}

/// Why a candidate did not win, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overridden {
    pub rule: String,
    pub scope: String,
    pub value: String,
    pub reason: String,
}

/// One line of `explain`: a setting, its value, the rule it came from and what it beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub setting: &'static str,
    pub value: Option<String>,
    pub winner: Option<(String, String)>,
    pub overridden: Vec<Overridden>,
    pub note: Option<String>,
}

impl RuleSet {
    /// Validates and builds. Every problem is reported, not just the first.
    pub fn new(rules: Vec<Rule>, groups: Groups) -> Result<RuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let base = format!("rules[{i}]");
            match &r.scope {
                Scope::Dir(d) if !(d.starts_with('/') && d.ends_with('/')) => {
                    errors.push(RuleError {
                        field: format!("{base}.dir"),
                        code: "invalid_dir",
                        fr: format!("le répertoire {d:?} doit commencer et finir par « / »"),
                        en: format!("directory {d:?} must start and end with '/'"),
                    })
                }
                Scope::Page(p) if !p.starts_with('/') => errors.push(RuleError {
                    field: format!("{base}.page"),
                    code: "invalid_page",
                    fr: format!("la page {p:?} doit commencer par « / »"),
                    en: format!("page {p:?} must start with '/'"),
                }),
                Scope::Group(g) if !groups.0.contains_key(g) => errors.push(RuleError {
                    field: format!("{base}.group"),
                    code: "unknown_group",
                    fr: format!(
                        "le groupe {g:?} n'existe pas (groupes : {})",
                        groups.0.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    en: format!(
                        "group {g:?} does not exist (groups: {})",
                        groups.0.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                }),
                Scope::ContentType(t)
                    if !t.contains('/') || t.contains(';') || *t != t.to_ascii_lowercase() =>
                {
                    errors.push(RuleError {
                        field: format!("{base}.content_type"),
                        code: "invalid_content_type",
                        fr: format!("{t:?} n'est pas un type de contenu comme « image/png »"),
                        en: format!("{t:?} is not a content type like \"image/png\""),
                    })
                }
                _ => {}
            }
            if r.scope.is_content_scope() {
                for s in REQUEST_TIME {
                    if r.settings.is_set(s) {
                        errors.push(RuleError {
                            field: format!("{base}.{s}"),
                            code: "request_setting_on_content_scope",
                            fr: format!(
                                "« {s} » se décide avant la réponse, quand le type de contenu n'est pas encore connu : placez-le sur un répertoire ou une page"
                            ),
                            en: format!("\"{s}\" is decided before the response, when the content type is not known yet: set it on a directory or a page"),
                        });
                    }
                }
            }
            for other in rules.iter().take(i) {
                if other.scope != r.scope {
                    continue;
                }
                for s in SETTINGS {
                    if r.settings.is_set(s) && other.settings.is_set(s) {
                        errors.push(RuleError {
                            field: format!("{base}.{s}"),
                            code: "conflicting_rules",
                            fr: format!(
                                "les règles « {} » et « {} » portent toutes deux sur {} et fixent « {s} » : gardez-en une seule",
                                other.id,
                                r.id,
                                scope_fr(&r.scope)
                            ),
                            en: format!(
                                "rules \"{}\" and \"{}\" both apply to {} and both set \"{s}\": keep only one",
                                other.id, r.id, r.scope
                            ),
                        });
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let used = SETTINGS.map(|s| rules.iter().any(|r| r.settings.is_set(s)));
        Ok(RuleSet {
            rules,
            groups,
            used,
        })
    }

    /// Whether any rule sets this setting (lets callers skip a resolution that cannot matter).
    pub fn uses(&self, setting: &str) -> bool {
        SETTINGS
            .iter()
            .position(|s| *s == setting)
            .is_some_and(|i| self.used[i])
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Candidates for one setting, most specific first.
    fn candidates(&self, setting: &str, path: &str, content_type: Option<&str>) -> Vec<&Rule> {
        let request_time = REQUEST_TIME.contains(&setting);
        let mut c: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.settings.is_set(setting))
            .filter(|r| !(request_time && r.scope.is_content_scope()))
            .filter(|r| r.scope.matches(path, content_type, &self.groups))
            .collect();
        c.sort_by_key(|r| std::cmp::Reverse(r.scope.rank()));
        c
    }

    /// Every setting resolved for a path and (if known) the response's content type. Without a
    /// content type, this is the request-time view.
    pub fn resolve(&self, path: &str, content_type: Option<&str>) -> Settings {
        let ct = content_type.map(media_type);
        let mut out = Settings::default();
        for s in SETTINGS {
            if let Some(r) = self.candidates(s, path, ct.as_deref()).first() {
                out.take(s, &r.settings);
            }
        }
        out
    }

    /// Per setting: the value, the rule that won, the rules it beat and why.
    pub fn explain(&self, path: &str, content_type: Option<&str>) -> Vec<Explanation> {
        let ct = content_type.map(media_type);
        let mut out = Vec::new();
        for s in SETTINGS {
            let c = self.candidates(s, path, ct.as_deref());
            let mut note = None;
            if REQUEST_TIME.contains(&s) {
                note = Some(
                    "decided before the response: only page, directory and default rules apply"
                        .to_owned(),
                );
            } else if ct.is_none()
                && self
                    .rules
                    .iter()
                    .any(|r| r.scope.is_content_scope() && r.settings.is_set(s))
            {
                note = Some(
                    "content-type rules exist for this setting; give a content type to see them"
                        .to_owned(),
                );
            }
            let Some(winner) = c.first() else {
                out.push(Explanation {
                    setting: s,
                    value: None,
                    winner: None,
                    overridden: vec![],
                    note,
                });
                continue;
            };
            let overridden = c[1..]
                .iter()
                .map(|r| Overridden {
                    rule: r.id.clone(),
                    scope: r.scope.to_string(),
                    value: r.settings.value(s).unwrap_or_default(),
                    reason: format!("{} is more specific than {}", winner.scope, r.scope),
                })
                .collect();
            out.push(Explanation {
                setting: s,
                value: winner.settings.value(s),
                winner: Some((winner.id.clone(), winner.scope.to_string())),
                overridden,
                note,
            });
        }
        out
    }
}

fn scope_fr(s: &Scope) -> String {
    match s {
        Scope::Platform => "le défaut de la plateforme".into(),
        Scope::Site => "le défaut du site".into(),
        Scope::Group(g) => format!("le groupe {g}"),
        Scope::ContentType(t) => format!("le type de contenu {t}"),
        Scope::Dir(d) => format!("le répertoire {d}"),
        Scope::Page(p) => format!("la page {p}"),
    }
}

/// Renders `explain` as text for the command line.
pub fn render_explain(lines: &[Explanation]) -> String {
    let mut s = String::new();
    for l in lines {
        match (&l.value, &l.winner) {
            (Some(v), Some((id, scope))) => s.push_str(&format!(
                "{:<24} {:<12} from rule {id} ({scope})\n",
                l.setting, v
            )),
            _ => s.push_str(&format!(
                "{:<24} {:<12} (no rule: origin headers and platform behaviour)\n",
                l.setting, "-"
            )),
        }
        for o in &l.overridden {
            s.push_str(&format!(
                "{:<24}   overrides rule {} ({}) = {}: {}\n",
                "", o.rule, o.scope, o.value, o.reason
            ));
        }
        if let Some(n) = &l.note {
            s.push_str(&format!("{:<24}   note: {n}\n", ""));
        }
    }
    s
}

#[cfg(test)]
mod tests;
