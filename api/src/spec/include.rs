//! Expanding `workflow` and `git` includes, as InfraBox does, into one pipeline of runnable jobs.
//!
//! - An included job is named `<include>/<name>` (nested: `a/b/c`), and its `depends_on` names
//!   are prefixed the same way (an included file only names its own jobs).
//! - An included job with no parents inherits the include job's `depends_on`.
//! - The include job itself becomes a `wait` job of the same name that depends, with
//!   `on: [finished]`, on the included jobs no other included job depends on (the leaves): a
//!   job that depends on the include waits for all of it, and is skipped if any of it did not
//!   finish.
//! - A `git` include's `environment` overrides the included jobs' variables.
//! - A `workflow` file is read relative to the directory of the file that names it, from the
//!   same tree (the pipeline's source, or the git repository the naming file came from); a
//!   path that leaves the tree is refused. A `git` file is read from the root of the
//!   repository at the commit (`infrabox.json`, then `infrabox.yaml`, when none is named).
//! - A file that includes itself, directly or through others, is an include cycle, reported
//!   with the chain of files. The same file included twice from different places is not.
//!
//! Reading the files is the caller's ([`Loader`]): the CLI reads a directory on disk and clones
//! with git; the gateway reads a pushed source. Every problem is kept, each with the file it is
//! in (`flow/infrabox.json: jobs[0].name: ...`).

use std::collections::BTreeSet;
use std::collections::HashMap;

use super::DefinedIn;
use super::Dependency;
use super::FinalState;
use super::GitAt;
use super::Include;
use super::JobKind;
use super::JobSpec;
use super::MAX_JOBS;
use super::OnState;
use super::PipelineSpec;
use super::SpecErrors;
use super::SpecProblem;

/// Deepest nesting of includes.
pub const MAX_DEPTH: usize = 16;
/// Longest name of an included job (`a/b/c`).
pub const MAX_NESTED_NAME_LEN: usize = 200;

/// The tree a pipeline file is read from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// The pipeline's own files (a directory on disk, or the pushed source).
    Root,
    /// A git repository at a commit.
    Git { clone_url: String, commit: String },
}

impl Tree {
    fn describe(&self, path: &str) -> String {
        match self {
            Tree::Root => path.to_string(),
            Tree::Git { clone_url, commit } => format!("{clone_url}@{commit}:{path}"),
        }
    }
}

/// Reads pipeline files for [`expand`].
pub trait Loader {
    /// The text of the file at `path` (relative, normalized, inside the tree) of `tree`; `None`
    /// when there is no such file. `Err` says why the tree or file could not be read.
    fn read(&mut self, tree: &Tree, path: &str) -> Result<Option<String>, String>;

    /// Whether includes from `tree` are left as they are (`atoll validate --offline` clones
    /// nothing): the include job stays in the pipeline, unexpanded.
    fn skips(&self, _tree: &Tree) -> bool {
        false
    }
}

/// Normalize `dir/path` (both relative), refusing a path that leaves the tree.
pub fn join_inside(dir: &str, path: &str) -> Result<String, String> {
    match normalize_inside(dir, path) {
        None => Err(format!("{path:?} leads outside the pipeline's files")),
        Some(joined) if joined.is_empty() => Err(format!("{path:?} names a directory, not a file")),
        Some(joined) => Ok(joined),
    }
}

/// `dir/path` (both relative) without `.` and `..` (`""`: the tree's root); `None` when it
/// climbs out of the tree. Lexical: links are not looked at.
pub fn normalize_inside(dir: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

fn dir_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Whether `spec` has an include left to expand.
pub fn has_includes(spec: &PipelineSpec) -> bool {
    spec.jobs.iter().any(|j| j.include.is_some())
}

/// Expand every include of `spec`, read from `path` of the root tree.
pub fn expand(spec: PipelineSpec, path: &str, loader: &mut dyn Loader) -> Result<PipelineSpec, SpecErrors> {
    if !has_includes(&spec) {
        return Ok(spec);
    }
    let mut problems = Vec::new();
    let mut stack = vec![(Tree::Root, path.to_string())];
    let mut count = 0usize;
    let mut cx = Expansion { loader, files: HashMap::new() };
    let jobs = expand_file(spec.jobs, &Tree::Root, path, "", &mut stack, &mut cx, &mut count, &mut problems);
    if count > MAX_JOBS {
        problems.push(SpecProblem {
            path: "jobs".into(),
            message: format!("the includes make {count} jobs; a pipeline has at most {MAX_JOBS}"),
        });
    }
    if !problems.is_empty() {
        return Err(SpecErrors(problems));
    }
    let expanded = PipelineSpec { version: spec.version, source: spec.source, jobs };
    debug_assert_eq!(super::topological_order(&expanded).len(), expanded.jobs.len(), "includes make no cycle");
    Ok(expanded)
}

/// What one expansion reads through: each file read and parsed once, however often it is
/// included (`None`: no such file).
struct Expansion<'l> {
    loader: &'l mut dyn Loader,
    files: HashMap<(Tree, String), Read>,
}

/// A file as read for an include: why it could not be, or that there is none, or what it holds.
type Read = Result<Option<Result<PipelineSpec, SpecErrors>>, String>;

impl Expansion<'_> {
    fn file(&mut self, tree: &Tree, path: &str) -> Read {
        let key = (tree.clone(), path.to_string());
        if let Some(done) = self.files.get(&key) {
            return done.clone();
        }
        let done = self.loader.read(tree, path).map(|text| text.map(|text| super::parse(&text)));
        self.files.insert(key, done.clone());
        done
    }
}

/// The jobs of one file, with its includes expanded; `prefix` is `""` at the root and
/// `"<include>/"` below.
#[allow(clippy::too_many_arguments)]
fn expand_file(
    jobs: Vec<JobSpec>,
    tree: &Tree,
    file: &str,
    prefix: &str,
    stack: &mut Vec<(Tree, String)>,
    cx: &mut Expansion<'_>,
    count: &mut usize,
    problems: &mut Vec<SpecProblem>,
) -> Vec<JobSpec> {
    let mut out = Vec::new();
    let at_root = stack.len() == 1;
    let here = |i: usize, key: &str| {
        let inner = format!("jobs[{i}].{key}");
        if at_root { inner } else { format!("{}: {inner}", tree.describe(file)) }
    };
    for (i, mut job) in jobs.into_iter().enumerate() {
        let name = format!("{prefix}{}", job.name);
        if name.len() > MAX_NESTED_NAME_LEN {
            problems.push(SpecProblem {
                path: here(i, "name"),
                message: format!("the included job's name {name:?} is longer than {MAX_NESTED_NAME_LEN} characters"),
            });
            continue;
        }
        for dep in &mut job.depends_on {
            dep.job = format!("{prefix}{}", dep.job);
        }
        job.name = name;
        // Every job of an expanded pipeline says where it was written: its index there is not
        // its index in the expanded list.
        job.defined_in = Some(DefinedIn {
            dir: dir_of(file).to_string(),
            at: here(i, "").trim_end_matches('.').to_string(),
            git: match tree {
                Tree::Root => None,
                Tree::Git { clone_url, commit } => Some(GitAt { clone_url: clone_url.clone(), commit: commit.clone() }),
            },
        });
        let Some(include) = job.include.take() else {
            *count += 1;
            out.push(job);
            continue;
        };
        if *count > MAX_JOBS {
            problems.push(SpecProblem {
                path: here(i, "type"),
                message: format!("the includes make more than {MAX_JOBS} jobs; a pipeline has at most {MAX_JOBS}"),
            });
            return out;
        }
        if stack.len() > MAX_DEPTH {
            problems.push(SpecProblem {
                path: here(i, "type"),
                message: format!("includes nest deeper than {MAX_DEPTH} files"),
            });
            continue;
        }
        // Where the included file is.
        let (sub_tree, candidates): (Tree, Vec<String>) = match &include {
            Include::Workflow { infrabox_file } => match join_inside(dir_of(file), infrabox_file) {
                Ok(p) => (tree.clone(), vec![p]),
                Err(why) => {
                    problems.push(SpecProblem { path: here(i, "infrabox_file"), message: why });
                    continue;
                }
            },
            Include::Git { clone_url, commit, infrabox_file, .. } => {
                let sub = Tree::Git { clone_url: clone_url.clone(), commit: commit.clone() };
                match infrabox_file {
                    Some(f) => match join_inside("", f) {
                        Ok(p) => (sub, vec![p]),
                        Err(why) => {
                            problems.push(SpecProblem { path: here(i, "infrabox_file"), message: why });
                            continue;
                        }
                    },
                    None => (sub, vec!["infrabox.json".to_string(), "infrabox.yaml".to_string()]),
                }
            }
        };
        if cx.loader.skips(&sub_tree) {
            job.include = Some(include);
            *count += 1;
            out.push(job);
            continue;
        }
        let key = if matches!(include, Include::Git { .. }) { "clone_url" } else { "infrabox_file" };
        let mut found = None;
        for candidate in &candidates {
            match cx.file(&sub_tree, candidate) {
                Ok(Some(parsed)) => {
                    found = Some((candidate.clone(), parsed));
                    break;
                }
                Ok(None) => {}
                Err(why) => {
                    problems.push(SpecProblem { path: here(i, key), message: why });
                    found = None;
                    break;
                }
            }
        }
        let Some((sub_file, parsed)) = found else {
            if !problems.iter().any(|p| p.path == here(i, key)) {
                let names: Vec<String> = candidates.iter().map(|c| sub_tree.describe(c)).collect();
                let message = match names.as_slice() {
                    [one] => format!("no pipeline file: {one} does not exist"),
                    many => format!("no pipeline file: neither {} exists", many.join(" nor ")),
                };
                problems.push(SpecProblem { path: here(i, key), message });
            }
            continue;
        };
        if let Some(at) = stack.iter().position(|(t, f)| *t == sub_tree && *f == sub_file) {
            let mut chain: Vec<String> = stack[at..].iter().map(|(t, f)| t.describe(f)).collect();
            chain.push(sub_tree.describe(&sub_file));
            problems
                .push(SpecProblem { path: here(i, key), message: format!("include cycle: {}", chain.join(" -> ")) });
            continue;
        }
        let sub_spec = match parsed {
            Ok(sub) => sub,
            Err(errors) => {
                for p in errors.0 {
                    let inner = if p.path.is_empty() { String::new() } else { p.path };
                    problems.push(SpecProblem {
                        path: format!("{}: {inner}", sub_tree.describe(&sub_file)).trim_end_matches(": ").to_string(),
                        message: p.message,
                    });
                }
                continue;
            }
        };
        stack.push((sub_tree.clone(), sub_file.clone()));
        let mut sub =
            expand_file(sub_spec.jobs, &sub_tree, &sub_file, &format!("{}/", job.name), stack, cx, count, problems);
        stack.pop();
        // Inherit the include's parents, and (git) its environment.
        let leaves: Vec<String> = {
            let named: BTreeSet<&str> = sub.iter().flat_map(|j| j.depends_on.iter().map(|d| d.job.as_str())).collect();
            sub.iter().filter(|j| !named.contains(j.name.as_str())).map(|j| j.name.clone()).collect()
        };
        for s in &mut sub {
            if s.depends_on.is_empty() {
                s.depends_on = job.depends_on.clone();
            }
            if s.runs_on_a_cluster() {
                // The source a job runs on: its own, else its file's, else the include job's;
                // likewise the include job's repository options.
                if s.source.is_none() {
                    s.source = sub_spec.source.clone().or_else(|| job.source.clone());
                }
                if s.container.repository.is_default() {
                    s.container.repository = job.container.repository;
                }
                for (k, v) in &job.environment {
                    s.secret_env.remove(k);
                    s.environment.insert(k.clone(), v.clone());
                }
                for (k, v) in &job.secret_env {
                    s.environment.remove(k);
                    s.secret_env.insert(k.clone(), v.clone());
                }
            }
        }
        out.extend(sub);
        // The include's own place: a wait job on every leaf.
        *count += 1;
        out.push(JobSpec {
            name: job.name,
            kind: JobKind::Wait,
            command: None,
            image: None,
            environment: Default::default(),
            timeout_s: super::DEFAULT_TIMEOUT_S,
            resources: Default::default(),
            cluster: Default::default(),
            depends_on: leaves
                .into_iter()
                .map(|job| Dependency { job, on: BTreeSet::from([OnState::State(FinalState::Finished)]) })
                .collect(),
            retries: 0,
            source: None,
            secret_env: Default::default(),
            container: Default::default(),
            include: None,
            defined_in: job.defined_in,
        });
    }
    out
}

/// The largest pipeline file read for an include.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The pipeline's own files: a directory on disk (`atoll validate FILE`, `atoll submit FILE`), or
/// the files a submission carried (the gateway). Every root file read is remembered, so the CLI
/// sends exactly those.
pub enum RootFiles {
    Dir(std::path::PathBuf),
    Given(std::collections::BTreeMap<String, String>),
}

/// A [`Loader`] over the pipeline's own files and git repositories cloned on demand.
pub struct Files {
    pub root: RootFiles,
    /// `None`: git includes are left unexpanded (nothing is cloned).
    pub git: Option<GitTrees>,
    /// Every root file read, by path: what `atoll submit` sends with the spec.
    pub read: std::collections::BTreeMap<String, String>,
}

impl Files {
    pub fn new(root: RootFiles, git: Option<GitTrees>) -> Files {
        Files { root, git, read: Default::default() }
    }

    /// The working tree of a git include checked out by [`expand`] (while this loader lives).
    pub fn git_tree(&self, clone_url: &str, commit: &str) -> Option<std::path::PathBuf> {
        self.git.as_ref()?.checked_out.get(&(clone_url.to_string(), commit.to_string()))?.clone().ok()
    }
}

impl Loader for Files {
    fn read(&mut self, tree: &Tree, path: &str) -> Result<Option<String>, String> {
        let text = match (tree, &self.root) {
            (Tree::Root, RootFiles::Dir(dir)) => read_inside(dir, path)?,
            (Tree::Root, RootFiles::Given(files)) if files.is_empty() => {
                return Err(format!(
                    "cannot read {path:?}: the submission carried no files and names no source; submit with `atoll submit FILE` (it sends the included files), or push them (`atoll push DIR`) and name the source"
                ));
            }
            (Tree::Root, RootFiles::Given(files)) => files.get(path).cloned(),
            (Tree::Git { clone_url, commit }, _) => {
                let git = self.git.as_mut().ok_or("git includes are not cloned here")?;
                let dir = git.checkout(clone_url, commit)?;
                read_inside(&dir, path)?
            }
        };
        if let (Tree::Root, Some(text)) = (tree, &text) {
            self.read.insert(path.to_string(), text.clone());
        }
        Ok(text)
    }

    fn skips(&self, tree: &Tree) -> bool {
        self.git.is_none() && matches!(tree, Tree::Git { .. })
    }
}

/// The text of `path` under `dir`, refusing a symbolic link that leads outside it (or to
/// nothing: the two are not told apart, nor where a link leads, so a repository cannot probe the
/// machine that reads it).
fn read_inside(dir: &std::path::Path, path: &str) -> Result<Option<String>, String> {
    let file = dir.join(path);
    let link = match std::fs::symlink_metadata(&file) {
        Ok(meta) => meta.file_type().is_symlink(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {path:?}: {}", e.kind())),
    };
    let base = dir.canonicalize().map_err(|e| format!("reading the pipeline's files: {}", e.kind()))?;
    let inside = file.canonicalize().is_ok_and(|real| real.starts_with(&base));
    if !inside {
        let what = if link {
            "a link that leads outside the pipeline's files, or to nothing"
        } else {
            "outside the pipeline's files"
        };
        return Err(format!("{path:?} is {what}"));
    }
    let meta = std::fs::metadata(&file).map_err(|e| format!("reading {path:?}: {}", e.kind()))?;
    if !meta.is_file() {
        return Err(format!("{path:?} is not a file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{path:?} has {} bytes; a pipeline file has at most {MAX_FILE_BYTES}", meta.len()));
    }
    std::fs::read_to_string(&file).map(Some).map_err(|e| format!("reading {path:?}: {}", e.kind()))
}

/// Git repositories cloned for `git` includes, each once per (URL, commit), in a temporary
/// directory removed with this. Runs the `git` program with a time limit per command.
pub struct GitTrees {
    dir: Option<tempfile::TempDir>,
    checked_out: std::collections::BTreeMap<(String, String), Result<std::path::PathBuf, String>>,
    clones: usize,
    timeout: std::time::Duration,
    local: bool,
}

/// Most repositories cloned for one pipeline.
pub const MAX_CLONES: usize = 16;

/// The transports a `git` include may use from a server: the network ones. A local path,
/// `file://` or a remote helper (`ext::`) would let a submitter have the gateway read its own
/// machine's repositories, or run commands.
const NETWORK_TRANSPORTS: [&str; 4] = ["https", "http", "git", "ssh"];

impl GitTrees {
    /// Network repositories only (the gateway: see [`NETWORK_TRANSPORTS`]).
    pub fn new(timeout: std::time::Duration) -> GitTrees {
        GitTrees { dir: None, checked_out: Default::default(), clones: 0, timeout, local: false }
    }

    /// Local paths and `file://` too (the CLI, on its user's own machine).
    pub fn with_local(timeout: std::time::Duration) -> GitTrees {
        GitTrees { local: true, ..GitTrees::new(timeout) }
    }

    /// Whether `clone_url` may be cloned here; why not.
    pub fn allows(&self, clone_url: &str) -> Result<(), String> {
        if self.local {
            return Ok(());
        }
        let scheme = clone_url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let scp_like =
            !clone_url.contains("://") && clone_url.split_once(':').is_some_and(|(host, _)| host.contains('@'));
        match scheme {
            Some(s) if NETWORK_TRANSPORTS.contains(&s.as_str()) => Ok(()),
            None if scp_like => Ok(()),
            _ => Err(format!(
                "{clone_url:?} is not a network repository: a git include is cloned over {} (not a local path, file:// or a helper)",
                NETWORK_TRANSPORTS.join(", ")
            )),
        }
    }

    /// A working tree of `clone_url` at `commit` (a commit id, branch or tag). A failure is
    /// remembered: the same include named again fails at once.
    pub fn checkout(&mut self, clone_url: &str, commit: &str) -> Result<std::path::PathBuf, String> {
        let key = (clone_url.to_string(), commit.to_string());
        if let Some(done) = self.checked_out.get(&key) {
            return done.clone();
        }
        let done = self.clone_at(clone_url, commit);
        self.checked_out.insert(key, done.clone());
        done
    }

    fn clone_at(&mut self, clone_url: &str, commit: &str) -> Result<std::path::PathBuf, String> {
        if clone_url.starts_with('-') || commit.starts_with('-') {
            return Err(format!("{clone_url:?} at {commit:?} is not a repository and commit"));
        }
        self.allows(clone_url)?;
        if self.clones >= MAX_CLONES {
            return Err(format!("more than {MAX_CLONES} repositories to clone for one pipeline"));
        }
        if self.dir.is_none() {
            self.dir = Some(tempfile::tempdir().map_err(|e| format!("a directory for git includes: {e}"))?);
        }
        self.clones += 1;
        let into = self.dir.as_ref().expect("made above").path().join(format!("repo-{}", self.clones));
        let into_text = into.to_string_lossy().to_string();
        let cloned = self
            .git(None, &["clone", "--quiet", "--no-checkout", "--", clone_url, &into_text])
            .map_err(|e| format!("cloning {clone_url}: {e}"))
            .and_then(|()| {
                // A commit id or tag, else a branch of the remote.
                self.git(Some(&into), &["checkout", "--quiet", "--detach", commit, "--"])
                    .or_else(|_| {
                        self.git(Some(&into), &["checkout", "--quiet", "--detach", &format!("origin/{commit}"), "--"])
                    })
                    .map_err(|e| format!("checking out {commit:?} of {clone_url}: {e}"))
            });
        if cloned.is_err() {
            let _ = std::fs::remove_dir_all(&into);
        }
        cloned.map(|()| into)
    }

    // Blocking by design: the gateway runs expansion in `spawn_blocking`, the CLI before it sends.
    #[allow(clippy::disallowed_methods)]
    fn git(&self, cwd: Option<&std::path::Path>, args: &[&str]) -> Result<(), String> {
        let dir = self.dir.as_ref().ok_or("no directory for git")?.path();
        let mut command = std::process::Command::new("git");
        // No configuration, credentials or keys of the machine's user: a pipeline's include is
        // fetched as nobody in particular, and never by a redirect elsewhere.
        let mut settings = vec![
            "credential.helper=".to_string(),
            "http.followRedirects=false".to_string(),
            "core.askPass=".to_string(),
        ];
        if self.local {
            settings.push("protocol.ext.allow=never".into());
        } else {
            settings.push("protocol.allow=never".into());
            settings.extend(NETWORK_TRANSPORTS.iter().map(|t| format!("protocol.{t}.allow=always")));
        }
        for setting in &settings {
            command.arg("-c").arg(setting);
        }
        let stderr_path = dir.join(format!("git-stderr-{}", self.clones));
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| format!("a file for git's messages: {e}"))?;
        command
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", dir)
            .env("GIT_SSH_COMMAND", "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|e| format!("running git: {e} (git includes need the git program)"))?;
        let deadline = std::time::Instant::now() + self.timeout;
        // Bounded: polls until the deadline, then kills.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("git took longer than {} s", self.timeout.as_secs()));
                }
                Err(e) => return Err(format!("waiting for git: {e}")),
            }
        };
        let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let _ = std::fs::remove_file(&stderr_path);
        if status.success() {
            return Ok(());
        }
        if !self.local {
            // A server does not echo git's words: they could tell a submitter about the
            // server's own network.
            return Err(format!("git failed ({status}); check the URL, the commit and that the repository is public"));
        }
        Err(said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("git failed").trim().to_string())
    }
}
