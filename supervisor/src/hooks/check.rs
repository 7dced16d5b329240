//! `twinfs hooks check FILE` and `twinfs hooks dry-run HOOK`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlua::Value;

use super::api::RunState;

use super::{
    find_assignment_line, Engine, Hook, HookContext, HookError, HookLimits, HookRuntime, HookState,
    Recorder,
};

/// What `check_script` found in a script that loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The script.
    pub path: PathBuf,
    /// The hooks it defines.
    pub defined: Vec<Hook>,
    /// Things that load but are probably mistakes, each starting with `file:line:`.
    pub warnings: Vec<String>,
}

/// Compiles the script and runs its top-level code (where `twinfs.*` actions
/// are refused), without running any hook. Errors: unreadable file, syntax
/// error, top-level error, a hook name set to a non-function. Warnings:
/// globals that look like misspelled hook names (`on_promot`, `On_Demote`).
pub fn check_script(path: &Path) -> Result<CheckReport, HookError> {
    // The engine itself, on this thread: the check reads its globals.
    let limits = HookLimits::default();
    let rt = Engine::load(
        path,
        HookContext::new("check", BTreeMap::new()),
        Arc::new(Recorder::new()),
        limits,
        Arc::new(std::sync::Mutex::new(RunState::new(path, limits.time))),
    )?;
    let mut warnings = Vec::new();
    for pair in rt.lua.globals().pairs::<Value, Value>() {
        let (key, value) = pair.map_err(|e| HookError::Setup(e.to_string()))?;
        let Value::String(key) = key else { continue };
        let name = key.to_string_lossy();
        if Hook::ALL.iter().any(|h| h.function_name() == name) {
            continue;
        }
        let Some(guess) = misspelled_hook(&name) else {
            continue;
        };
        let line = match &value {
            Value::Function(f) => f
                .info()
                .line_defined
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            _ => find_assignment_line(path, &name),
        };
        warnings.push(format!(
            "{}:{line}: global '{name}' looks like a misspelled hook name (did you mean {guess}?); twinfs never calls it",
            path.display()
        ));
    }
    warnings.sort();
    Ok(CheckReport {
        path: path.to_owned(),
        defined: rt.defined().to_vec(),
        warnings,
    })
}

/// The hook `name` probably meant: any `on_*` global, or a name within two
/// typos of a hook name (case ignored).
fn misspelled_hook(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let (best, dist) = Hook::ALL
        .iter()
        .map(|h| (h.function_name(), edit_distance(&lower, h.function_name())))
        .min_by_key(|(_, d)| *d)?;
    (dist <= 2 || lower.starts_with("on_")).then_some(best)
}

/// Levenshtein distance; names are short, so the plain two-row version.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Runs `hook` of the script against a [`Recorder`]: nothing is done to the
/// machine. Returns one line per action (`vip.claim 10.0.0.10/24 on eth0`,
/// `service.start apache2`). `twinfs.state` is [`HookState::example`].
pub fn dry_run(path: &Path, hook: Hook, ctx: HookContext) -> Result<Vec<String>, HookError> {
    dry_run_with(path, hook, ctx, &HookState::example(hook))
}

/// [`dry_run`] with the node in `state` (e.g. [`HookState::example`] with
/// `standby_serves` set from the config).
pub fn dry_run_with(
    path: &Path,
    hook: Hook,
    ctx: HookContext,
    state: &HookState,
) -> Result<Vec<String>, HookError> {
    let recorder = Arc::new(Recorder::new());
    let mut rt = HookRuntime::load(path, ctx, recorder.clone(), HookLimits::default())?;
    rt.run(hook, state)?;
    Ok(recorder.lines())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("on_promot", "on_promote"), 1);
        assert_eq!(edit_distance("on_demote", "on_demote"), 0);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn misspellings_are_recognised_and_ordinary_names_are_not() {
        assert_eq!(misspelled_hook("on_promot"), Some("on_promote"));
        assert_eq!(misspelled_hook("On_Demote"), Some("on_demote"));
        assert_eq!(misspelled_hook("on_peerlost"), Some("on_peer_lost"));
        assert_eq!(misspelled_hook("onpromote"), Some("on_promote"));
        assert!(misspelled_hook("on_failover").is_some());
        assert_eq!(misspelled_hook("tonumber"), None);
        assert_eq!(misspelled_hook("service"), None);
        assert_eq!(misspelled_hook("once"), None);
    }
}
