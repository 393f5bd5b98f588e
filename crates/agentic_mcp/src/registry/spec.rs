//! Package specs: `npm:@scope/name@1.2.3`, `npm:name@1.2.3`, `pypi:name==1.2.3`.
//!
//! Only exact versions are accepted. A range, a dist-tag such as `latest`, a URL,
//! a path, extras or environment markers would let what gets installed change
//! between two installs of the same spec (or come from somewhere other than the
//! registry), so each is refused with a one-line reason.

use std::fmt;
use std::str::FromStr;

/// npm's own limit on a package name's length (scope included).
const NPM_NAME_MAX: usize = 214;
/// A generous cap on a PyPI project name (PyPI itself has no documented cap;
/// real names are far shorter, and the name ends up in file names and logs).
const PYPI_NAME_MAX: usize = 200;
/// A cap on a version string: real versions are short, and the spec is echoed
/// in errors and events.
const VERSION_MAX: usize = 64;

/// Why a package spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No `npm:` or `pypi:` prefix.
    #[error("package spec {0:?} names no registry: write npm:NAME@VERSION or pypi:NAME==VERSION")]
    NoRegistry(String),
    /// A prefix other than `npm:` or `pypi:`.
    #[error("unknown registry {0:?} in package spec: lion installs from npm: and pypi:")]
    UnknownRegistry(String),
    /// The version is missing or not exact.
    #[error("package spec {spec:?} is not pinned: {why}")]
    NotPinned {
        /// The spec as given.
        spec: String,
        /// Why, in a few words, with what to write instead.
        why: &'static str,
    },
    /// A form that installs from somewhere else or installs something else
    /// than one exact release (URL, path, extras, markers).
    #[error("package spec {spec:?} refused: {why}")]
    Refused {
        /// The spec as given.
        spec: String,
        /// Why, in a few words.
        why: &'static str,
    },
    /// The package name breaks the registry's naming rules.
    #[error("package spec {spec:?}: invalid package name: {why}")]
    BadName {
        /// The spec as given.
        spec: String,
        /// Which rule the name breaks.
        why: &'static str,
    },
}

/// A package on a registry at one exact version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PackageSpec {
    /// An npm package (`name` may carry its `@scope/`).
    Npm {
        /// The package name, e.g. `@modelcontextprotocol/server-filesystem`.
        name: String,
        /// The exact semver version, e.g. `2026.8.31`.
        version: String,
    },
    /// A PyPI distribution, installed from wheels into a venv of its own.
    Pypi {
        /// The project name, e.g. `mcp-server-time`.
        name: String,
        /// The exact PEP 440 version, e.g. `2026.10.19`.
        version: String,
    },
}

impl PackageSpec {
    /// Parses a spec; see the module docs for what is accepted.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let s = spec.trim();
        let Some((registry, rest)) = s.split_once(':') else {
            return Err(SpecError::NoRegistry(spec.to_owned()));
        };
        match registry {
            "npm" => parse_npm(spec, rest),
            "pypi" => parse_pypi(spec, rest),
            // `https://…`, `git+…`, `file:…` are not registries: say so plainly.
            "http" | "https" | "git" | "git+https" | "git+ssh" | "file" => {
                Err(SpecError::Refused {
                    spec: spec.to_owned(),
                    why: "URLs and paths are not installed: give npm:NAME@VERSION or pypi:NAME==VERSION",
                })
            }
            other if other.contains('/') || other.starts_with('.') => {
                Err(SpecError::NoRegistry(spec.to_owned()))
            }
            other => Err(SpecError::UnknownRegistry(other.to_owned())),
        }
    }

    /// The package name as the registry spells it.
    pub fn name(&self) -> &str {
        match self {
            Self::Npm { name, .. } | Self::Pypi { name, .. } => name,
        }
    }

    /// The exact version.
    pub fn version(&self) -> &str {
        match self {
            Self::Npm { version, .. } | Self::Pypi { version, .. } => version,
        }
    }
}

impl fmt::Display for PackageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Npm { name, version } => write!(f, "npm:{name}@{version}"),
            Self::Pypi { name, version } => write!(f, "pypi:{name}=={version}"),
        }
    }
}

impl FromStr for PackageSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for PackageSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PackageSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn refused(spec: &str, why: &'static str) -> SpecError {
    SpecError::Refused {
        spec: spec.to_owned(),
        why,
    }
}

fn not_pinned(spec: &str, why: &'static str) -> SpecError {
    SpecError::NotPinned {
        spec: spec.to_owned(),
        why,
    }
}

fn bad_name(spec: &str, why: &'static str) -> SpecError {
    SpecError::BadName {
        spec: spec.to_owned(),
        why,
    }
}

/// Refusals shared by both registries: URLs, paths and whitespace.
fn refuse_locations(spec: &str, rest: &str) -> Result<(), SpecError> {
    if rest.contains("://")
        || rest.starts_with("git+")
        || rest.starts_with("github:")
        || rest.starts_with("file:")
    {
        return Err(refused(
            spec,
            "URLs are not installed: name a registry package at an exact version",
        ));
    }
    if rest.starts_with('.') || rest.starts_with('/') || rest.starts_with('~') {
        return Err(refused(
            spec,
            "paths are not installed: use a manifest for a local executable",
        ));
    }
    if rest.chars().any(char::is_whitespace) {
        return Err(refused(spec, "spaces are not allowed in a package spec"));
    }
    Ok(())
}

fn parse_npm(spec: &str, rest: &str) -> Result<PackageSpec, SpecError> {
    refuse_locations(spec, rest)?;
    // A scoped name starts with '@': the version's '@' is the next one.
    let at = if let Some(scoped) = rest.strip_prefix('@') {
        scoped.find('@').map(|i| i + 1)
    } else {
        rest.find('@')
    };
    let Some(at) = at else {
        return Err(not_pinned(
            spec,
            "no version: add @VERSION (an exact version like 1.2.3)",
        ));
    };
    let (name, version) = (&rest[..at], &rest[at + 1..]);
    check_npm_name(spec, name)?;
    check_semver_exact(spec, version)?;
    Ok(PackageSpec::Npm {
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

fn check_npm_name(spec: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(bad_name(spec, "empty"));
    }
    if name.len() > NPM_NAME_MAX {
        return Err(bad_name(spec, "longer than npm's 214 characters"));
    }
    let parts: Vec<&str> = match name.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('/') {
            Some((scope, bare)) => vec![scope, bare],
            None => return Err(bad_name(spec, "a scoped name is @SCOPE/NAME")),
        },
        None => vec![name],
    };
    for part in parts {
        if part.is_empty() {
            return Err(bad_name(spec, "empty scope or name"));
        }
        if part.starts_with('.') || part.starts_with('_') {
            return Err(bad_name(spec, "starts with '.' or '_'"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~".contains(&b))
        {
            return Err(bad_name(
                spec,
                "npm names are lowercase letters, digits and - . _ ~",
            ));
        }
    }
    Ok(())
}

/// Digits without a leading zero (semver's numeric identifier).
fn is_semver_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Dot-separated identifiers of `[0-9A-Za-z-]` (semver pre-release / build).
fn is_semver_idents(s: &str) -> bool {
    s.split('.')
        .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Accepts `MAJOR.MINOR.PATCH[-pre][+build]` exactly, the only form npm
/// resolves to one release.
fn check_semver_exact(spec: &str, version: &str) -> Result<(), SpecError> {
    if version.is_empty() {
        return Err(not_pinned(
            spec,
            "no version after '@': give an exact version like 1.2.3",
        ));
    }
    if version.len() > VERSION_MAX {
        return Err(not_pinned(spec, "the version is longer than 64 characters"));
    }
    if version.contains(['^', '~', '<', '>', '=', '*', '|']) || version.eq_ignore_ascii_case("x") {
        return Err(not_pinned(
            spec,
            "a version range: give an exact version like 1.2.3",
        ));
    }
    if version.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(not_pinned(
            spec,
            "a dist-tag (like latest) can move: give an exact version like 1.2.3",
        ));
    }
    let (core, build) = match version.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (version, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let exact = numbers.len() == 3
        && numbers.iter().all(|n| is_semver_number(n))
        && pre.is_none_or(is_semver_idents)
        && build.is_none_or(is_semver_idents);
    if !exact {
        if numbers.len() < 3 || numbers.iter().any(|n| n.eq_ignore_ascii_case("x")) {
            return Err(not_pinned(
                spec,
                "a partial version is a range: give MAJOR.MINOR.PATCH",
            ));
        }
        return Err(not_pinned(
            spec,
            "not an exact semver version MAJOR.MINOR.PATCH[-PRE]",
        ));
    }
    Ok(())
}

fn parse_pypi(spec: &str, rest: &str) -> Result<PackageSpec, SpecError> {
    refuse_locations(spec, rest)?;
    if rest.contains('@') {
        return Err(refused(
            spec,
            "direct references (NAME @ URL) are not installed: give NAME==VERSION",
        ));
    }
    if rest.contains(';') {
        return Err(refused(
            spec,
            "environment markers are not accepted: give NAME==VERSION",
        ));
    }
    if rest.contains('[') || rest.contains(']') {
        return Err(refused(
            spec,
            "extras pull in optional dependencies: give NAME==VERSION without [EXTRAS]",
        ));
    }
    if rest.contains("===") {
        return Err(refused(
            spec,
            "arbitrary equality (===) is not accepted: give NAME==VERSION",
        ));
    }
    let Some((name, version)) = rest.split_once("==") else {
        if rest.contains(['<', '>', '!', '~', '=']) {
            return Err(not_pinned(
                spec,
                "a version range: give NAME==VERSION with an exact version",
            ));
        }
        return Err(not_pinned(
            spec,
            "no version: add ==VERSION (an exact version like 1.2.3)",
        ));
    };
    check_pypi_name(spec, name)?;
    check_pep440_exact(spec, version)?;
    Ok(PackageSpec::Pypi {
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

/// PEP 508 names: ASCII letters and digits, with `.`, `_`, `-` inside.
fn check_pypi_name(spec: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(bad_name(spec, "empty"));
    }
    if name.len() > PYPI_NAME_MAX {
        return Err(bad_name(spec, "longer than 200 characters"));
    }
    let bytes = name.as_bytes();
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !ends_ok
        || !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
    {
        return Err(bad_name(
            spec,
            "PyPI names are letters, digits and . _ - (starting and ending with a letter or digit)",
        ));
    }
    Ok(())
}

/// Accepts a PEP 440 public version without wildcards:
/// `[N!]N(.N)*[{a|b|rc}N][.postN][.devN]`.
fn check_pep440_exact(spec: &str, version: &str) -> Result<(), SpecError> {
    if version.is_empty() {
        return Err(not_pinned(
            spec,
            "no version after '==': give an exact version like 1.2.3",
        ));
    }
    if version.len() > VERSION_MAX {
        return Err(not_pinned(spec, "the version is longer than 64 characters"));
    }
    if version.contains('*') {
        return Err(not_pinned(
            spec,
            "a wildcard version (==1.2.*) is a range: give an exact version",
        ));
    }
    if version.contains(',') || version.contains(['<', '>', '~', '=']) || version.contains("!=") {
        return Err(not_pinned(
            spec,
            "several version clauses: give one exact ==VERSION",
        ));
    }
    if version.contains('+') {
        return Err(refused(
            spec,
            "local versions (+LOCAL) are not on PyPI: give the public version",
        ));
    }
    if !is_pep440_public(version) {
        return Err(not_pinned(
            spec,
            "not an exact PEP 440 version like 1.2.3 or 1.2.3rc1",
        ));
    }
    Ok(())
}

fn take_digits(s: &str) -> Option<(&str, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

fn is_pep440_public(v: &str) -> bool {
    let mut rest = v;
    // Optional epoch `N!`.
    if let Some((_, after)) = take_digits(rest)
        && let Some(after) = after.strip_prefix('!')
    {
        rest = after;
    }
    // Release: N(.N)*
    let Some((_, after)) = take_digits(rest) else {
        return false;
    };
    rest = after;
    while let Some(after) = rest.strip_prefix('.') {
        match take_digits(after) {
            Some((_, a)) => rest = a,
            None => break,
        }
    }
    // Pre-release: aN | bN | rcN
    for tag in ["rc", "a", "b"] {
        if let Some(after) = rest.strip_prefix(tag) {
            let Some((_, a)) = take_digits(after) else {
                return false;
            };
            rest = a;
            break;
        }
    }
    for tag in [".post", ".dev"] {
        if let Some(after) = rest.strip_prefix(tag) {
            let Some((_, a)) = take_digits(after) else {
                return false;
            };
            rest = a;
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exact_npm_and_pypi_specs() {
        let s =
            PackageSpec::parse("npm:@modelcontextprotocol/server-filesystem@2026.8.31").unwrap();
        assert_eq!(s.name(), "@modelcontextprotocol/server-filesystem");
        assert_eq!(s.version(), "2026.8.31");
        assert_eq!(
            s.to_string(),
            "npm:@modelcontextprotocol/server-filesystem@2026.8.31"
        );
        let s = PackageSpec::parse("npm:left-pad@1.3.0").unwrap();
        assert_eq!(
            s,
            PackageSpec::Npm {
                name: "left-pad".into(),
                version: "1.3.0".into()
            }
        );
        assert!(PackageSpec::parse("npm:x@1.0.0-beta.2+build.5").is_ok());
        let s = PackageSpec::parse("pypi:mcp-server-time==2026.10.19").unwrap();
        assert_eq!(
            s,
            PackageSpec::Pypi {
                name: "mcp-server-time".into(),
                version: "2026.10.19".into()
            }
        );
        assert_eq!(s.to_string(), "pypi:mcp-server-time==2026.10.19");
        for v in [
            "1",
            "1.2rc1",
            "2.0.post3",
            "1.0.dev4",
            "1!2.0",
            "1.0a1.post2.dev3",
        ] {
            assert!(PackageSpec::parse(&format!("pypi:x=={v}")).is_ok(), "{v}");
        }
    }

    #[test]
    fn spec_round_trips_through_serde() {
        let s = PackageSpec::parse("pypi:mcp-server-time==2026.10.19").unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"pypi:mcp-server-time==2026.10.19\"");
        assert_eq!(serde_json::from_str::<PackageSpec>(&j).unwrap(), s);
        assert!(serde_json::from_str::<PackageSpec>("\"npm:x@latest\"").is_err());
    }

    fn err(spec: &str) -> SpecError {
        PackageSpec::parse(spec).expect_err(spec)
    }

    #[test]
    fn refuses_npm_ranges_tags_urls_and_paths() {
        for (spec, needle) in [
            ("npm:left-pad", "no version"),
            ("npm:left-pad@", "no version"),
            ("npm:@scope/name", "no version"),
            ("npm:left-pad@latest", "dist-tag"),
            ("npm:left-pad@next", "dist-tag"),
            ("npm:left-pad@^1.3.0", "range"),
            ("npm:left-pad@~1.3.0", "range"),
            ("npm:left-pad@>=1.0.0", "range"),
            ("npm:left-pad@1.x", "partial"),
            ("npm:left-pad@1.3", "partial"),
            ("npm:left-pad@*", "range"),
            ("npm:left-pad@01.3.0", "exact semver"),
            ("npm:https://example.com/x.tgz", "URL"),
            ("npm:git+https://github.com/a/b", "URL"),
            ("npm:github:a/b", "URL"),
            ("npm:./local", "path"),
            ("npm:/abs/path", "path"),
            ("npm:Left-Pad@1.0.0", "lowercase"),
            ("npm:@scope@1.0.0", "@SCOPE/NAME"),
            ("npm:_hidden@1.0.0", "starts with"),
            ("https://example.com/x.tgz", "URLs"),
            ("left-pad@1.0.0", "names no registry"),
            ("cargo:serde@1.0.0", "unknown registry"),
        ] {
            let e = err(spec).to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn refuses_pypi_ranges_extras_markers_urls_and_paths() {
        for (spec, needle) in [
            ("pypi:mcp-server-time", "no version"),
            ("pypi:mcp-server-time==", "no version"),
            ("pypi:mcp-server-time>=1.0", "range"),
            ("pypi:mcp-server-time~=1.0", "range"),
            ("pypi:mcp-server-time==1.*", "wildcard"),
            ("pypi:mcp-server-time==1.0,!=1.1", "several"),
            ("pypi:mcp-server-time===1.0", "arbitrary"),
            ("pypi:mcp-server-time==1.0+local", "local"),
            ("pypi:mcp-server-time==latest", "PEP 440"),
            ("pypi:mcp[cli]==1.0", "extras"),
            ("pypi:mcp==1.0;python_version>'3'", "markers"),
            ("pypi:mcp@https://example.com/x.whl", "URL"),
            ("pypi:https://example.com/x.whl", "URL"),
            ("pypi:./dist/x.whl", "path"),
            ("pypi:-bad==1.0", "invalid package name"),
            ("pypi:mcp == 1.0", "spaces"),
        ] {
            let e = err(spec).to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
