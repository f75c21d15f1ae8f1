//! The command guard: decides whether an argv may be executed.
//!
//! Commands never run through a shell, so the guard does not look for a
//! "safe prefix" of a string (the original's mistake: `a && b` passed
//! because `a` did). It checks the argv the executor will hand to `execve`:
//!
//! 1. **Shape**: a non-empty argv; no NUL, newline or other control
//!    character anywhere; ASCII only (no Unicode look-alikes); the argv
//!    joined with single spaces at most `maxCommandLength` characters.
//! 2. **Executable**: an absolute, normalised path directly inside one of
//!    [`SYSTEM_DIRS`] (`/tmp/systemctl` is not `systemctl`). Never a shell,
//!    interpreter, pager, editor or program runner ([`is_interpreter`]: `sh`,
//!    `bash`, `python3`, `env`, `sudo`, `xargs`, `awk`, `less`, `vi`, `ssh`,
//!    `git`, ...), whatever its directory and whether or not the allowlist
//!    is enforced.
//! 3. **Arguments**: no shell metacharacters (`; & | $ \` < > ( ) { } ' " \ ! # ~ ^`),
//!    no whitespace, no `..` path component, and none of the options known
//!    to make a program run another program (`-exec`, `ProxyCommand`,
//!    `core.pager`, `--to-command`, `--checkpoint-action`, ...). A
//!    metacharacter is harmless to `execve`, but there is no legitimate
//!    use for one in a remediation command and it is the mark of a shell
//!    string pasted into an argv.
//! 4. **Allowlist**: the executable must have an entry in the built-in
//!    table, whose per-executable rules (allowed options and subcommands,
//!    required options, path-only positionals, `--no-pager` where a pager
//!    could start) must pass. Options are *allowlisted*, so an abbreviated
//!    or unknown option is refused rather than guessed at. With
//!    `enforceAllowlist` off, executables without an entry are accepted
//!    (rules 1-3 still apply) and `allowlistRegex` is ignored; executables
//!    with an entry are always held to it.
//! 5. **Regexes**: `VPS_REMEDIATE_BLOCKLIST_REGEX` blocks a command whose
//!    argv joined with single spaces matches; `VPS_REMEDIATE_ALLOWLIST_REGEX`
//!    (when the allowlist is enforced) must match it. They can only narrow
//!    what rules 1-4 allow.
//! 6. **Counts**: at most `maxCommandsPerAction` entries in each list.
//!
//! The same rules apply to commands, canary checks and rollback commands
//! ([`check_action`]): a rollback runs with the same privileges as the
//! commands, so it gets no exemption. The `sudo -n` prefix of actions marked
//! `sudo` is added by the executor *after* the guard, which therefore never
//! sees, and never allows, `sudo` as a command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::RenderedAction;
use crate::policy::GuardPolicy;

/// The only directories executables may live in.
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Characters never allowed inside an argument.
pub const SHELL_METACHARACTERS: &[char] = &[
    ';', '&', '|', '`', '$', '<', '>', '(', ')', '{', '}', '\'', '"', '\\', '!', '#', '~', '^',
];

/// Which list of an action a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// The action's commands.
    Command,
    /// A canary check, run after the commands succeed.
    Canary,
    /// A rollback command, run when the run or its canary fails.
    Rollback,
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKind::Command => "command",
            CommandKind::Canary => "canary check",
            CommandKind::Rollback => "rollback command",
        })
    }
}

/// Why one command is refused. Serializes as the seed's `{index, reason}`
/// plus `kind` and a stable `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardIssue {
    /// Index of the command in its list.
    pub index: usize,
    /// Which list.
    pub kind: CommandKind,
    /// Stable machine code, e.g. `interpreter`, `shell_metachar`.
    pub code: &'static str,
    /// A sentence a person can act on.
    pub reason: String,
}

impl fmt::Display for GuardIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.index, self.reason)
    }
}

/// Check one list of commands. Returns every issue (one per refused
/// command, plus one if the list is too long); empty means allowed.
pub fn check(commands: &[Vec<String>], kind: CommandKind, guard: &GuardPolicy) -> Vec<GuardIssue> {
    let mut issues = Vec::new();
    let max = usize::try_from(guard.max_commands_per_action).unwrap_or(usize::MAX);
    if commands.len() > max {
        issues.push(GuardIssue {
            index: max,
            kind,
            code: "too_many_commands",
            reason: format!(
                "{} {kind}s; at most {max} allowed (maxCommandsPerAction)",
                commands.len()
            ),
        });
    }
    for (index, argv) in commands.iter().enumerate() {
        if let Err(Denied { code, reason }) = check_argv(argv, guard) {
            issues.push(GuardIssue {
                index,
                kind,
                code,
                reason,
            });
        }
    }
    issues
}

/// Check a rendered action's commands, canary checks and rollback commands.
pub fn check_action(action: &RenderedAction, guard: &GuardPolicy) -> Result<(), Vec<GuardIssue>> {
    let mut issues = check(&action.commands, CommandKind::Command, guard);
    issues.extend(check(&action.canary_checks, CommandKind::Canary, guard));
    issues.extend(check(&action.rollback, CommandKind::Rollback, guard));
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

#[derive(Debug)]
struct Denied {
    code: &'static str,
    reason: String,
}

fn deny<T>(code: &'static str, reason: impl Into<String>) -> Result<T, Denied> {
    Err(Denied {
        code,
        reason: reason.into(),
    })
}

/// Check one argv.
fn check_argv(argv: &[String], guard: &GuardPolicy) -> Result<(), Denied> {
    let Some(exe) = argv.first() else {
        return deny("empty_command", "empty command");
    };
    for (i, arg) in argv.iter().enumerate() {
        // Named only in a refusal: nothing is formatted for an argument
        // that passes.
        let what = || {
            if i == 0 {
                "the executable".to_owned()
            } else {
                format!("argument {i}")
            }
        };
        if arg.contains('\0') {
            return deny("nul_byte", format!("{} contains a NUL byte", what()));
        }
        if arg.chars().any(char::is_control) {
            return deny(
                "control_char",
                format!(
                    "{} {arg:?} contains a newline or another control character",
                    what()
                ),
            );
        }
        if !arg.is_ascii() {
            return deny(
                "non_ascii",
                format!(
                    "{} {arg:?} contains non-ASCII characters (a look-alike letter?)",
                    what()
                ),
            );
        }
    }
    let joined = argv.join(" ");
    let max_len = usize::try_from(guard.max_command_length).unwrap_or(usize::MAX);
    if joined.len() > max_len {
        return deny(
            "too_long",
            format!(
                "command is {} characters long; at most {max_len} allowed (maxCommandLength)",
                joined.len()
            ),
        );
    }
    let name = check_executable(exe)?;
    for (i, arg) in argv.iter().enumerate().skip(1) {
        check_argument(i, arg)?;
    }
    match spec_for(name) {
        Some(spec) => spec.check(argv.get(1..).unwrap_or(&[]))?,
        None if guard.enforce_allowlist => {
            return deny(
                "not_allowlisted",
                format!("{name} is not on the executable allowlist"),
            );
        }
        None => {}
    }
    if let Some(re) = &guard.blocklist_regex
        && re.is_match(&joined)
    {
        return deny(
            "blocklisted",
            format!("command matches the blocklist regex {:?}", re.as_str()),
        );
    }
    if guard.enforce_allowlist
        && let Some(re) = &guard.allowlist_regex
        && !re.is_match(&joined)
    {
        return deny(
            "allowlist_regex",
            format!(
                "command does not match the allowlist regex {:?}",
                re.as_str()
            ),
        );
    }
    Ok(())
}

/// Check the executable path; returns its file name.
fn check_executable(exe: &str) -> Result<&str, Denied> {
    let dirs = || SYSTEM_DIRS.join(", ");
    if !exe.starts_with('/') {
        return deny(
            "not_absolute",
            format!(
                "executable {exe:?} must be an absolute path in one of {}",
                dirs()
            ),
        );
    }
    if exe.ends_with('/') || exe.contains("//") || exe.split('/').any(|c| c == "." || c == "..") {
        return deny(
            "path_traversal",
            format!("executable {exe:?} is not a normalised path"),
        );
    }
    let (dir, name) = exe.rsplit_once('/').unwrap_or(("", exe));
    if is_interpreter(name) {
        return deny(
            "interpreter",
            format!(
                "{name} is a shell, interpreter or program runner; commands never run through one"
            ),
        );
    }
    if !SYSTEM_DIRS.contains(&dir) {
        return deny(
            "untrusted_location",
            format!(
                "executable {exe:?} is outside the system directories ({})",
                dirs()
            ),
        );
    }
    Ok(name)
}

/// Options and settings known to make a program run another program, in
/// any executable's arguments (lowercase substrings), with why.
const RUNS_PROGRAMS: &[(&str, &str)] = &[
    ("proxycommand", "ssh ProxyCommand runs a program"),
    ("localcommand", "ssh LocalCommand runs a program"),
    ("core.pager", "git core.pager runs a program"),
    ("core.sshcommand", "git core.sshCommand runs a program"),
    ("core.editor", "git core.editor runs a program"),
    ("core.fsmonitor", "git core.fsmonitor runs a program"),
    ("core.hookspath", "git hooks run programs"),
    ("sequence.editor", "git sequence.editor runs a program"),
    ("diff.external", "git diff.external runs a program"),
    ("pre-invoke", "dpkg/apt Pre-Invoke hooks run programs"),
    ("post-invoke", "dpkg/apt Post-Invoke hooks run programs"),
    (
        "checkpoint-action",
        "tar --checkpoint-action runs a program",
    ),
    ("to-command", "tar --to-command runs a program"),
    (
        "compress-program",
        "tar --use-compress-program runs a program",
    ),
    ("rsh-command", "tar --rsh-command runs a program"),
    ("info-script", "tar --info-script runs a program"),
    ("volume-script", "tar --new-volume-script runs a program"),
    ("--modprobe", "iptables --modprobe runs a program"),
    ("strip-program", "install --strip-program runs a program"),
    ("--rsync-path", "rsync --rsync-path runs a program"),
    ("--rsh", "--rsh runs a program"),
    ("--pager", "a pager can run programs"),
    ("--editor", "an editor can run programs"),
    ("ld_preload", "LD_PRELOAD loads code into a program"),
    (
        "ld_library_path",
        "LD_LIBRARY_PATH loads code into a program",
    ),
    ("bash_env", "BASH_ENV runs a script"),
];

/// `find` actions that run programs or write files; refused for any
/// executable so they cannot slip through a non-allowlisted `find`.
const FIND_ACTIONS: &[&str] = &[
    "-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fprint0", "-fprintf", "-fls",
];

fn check_argument(i: usize, arg: &str) -> Result<(), Denied> {
    if let Some(c) = arg.chars().find(|c| SHELL_METACHARACTERS.contains(c)) {
        return deny(
            "shell_metachar",
            format!("argument {i} {arg:?} contains the shell metacharacter {c:?}"),
        );
    }
    if arg.contains(' ') {
        return deny(
            "whitespace",
            format!("argument {i} {arg:?} contains a space; each word is its own argument"),
        );
    }
    if arg == ".." || arg.split(['/', '=']).any(|c| c == "..") {
        return deny(
            "path_traversal",
            format!("argument {i} {arg:?} contains a '..' path component"),
        );
    }
    let lower = arg.to_ascii_lowercase();
    if let Some((_, why)) = RUNS_PROGRAMS
        .iter()
        .find(|(needle, _)| lower.contains(needle))
    {
        return deny("forbidden_option", format!("argument {i} {arg:?}: {why}"));
    }
    if FIND_ACTIONS.contains(&lower.as_str()) {
        return deny(
            "forbidden_option",
            format!("argument {i} {arg:?} runs a program or writes a file (find action)"),
        );
    }
    Ok(())
}

/// Shells, interpreters, privilege and process wrappers, pagers, editors and
/// remote-execution tools: programs that run other programs or code given to
/// them. Names are compared in lowercase, also without a version suffix
/// (`python3.12`, `perl5.36`, `vim.basic`).
const INTERPRETERS: &[&str] = &[
    // shells
    "sh",
    "bash",
    "rbash",
    "dash",
    "zsh",
    "ksh",
    "ksh93",
    "mksh",
    "pdksh",
    "csh",
    "tcsh",
    "fish",
    "ash",
    "yash",
    "posh",
    "busybox",
    "toybox",
    "script",
    "expect",
    // interpreters
    "python",
    "pypy",
    "perl",
    "ruby",
    "irb",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "sed",
    "ed",
    "guile",
    "julia",
    "rscript",
    "java",
    "jrunscript",
    "pwsh",
    "erl",
    "elixir",
    "gdb",
    "lldb",
    // wrappers that run a program given as an argument
    "env",
    "sudo",
    "su",
    "doas",
    "pkexec",
    "runuser",
    "sg",
    "newgrp",
    "chroot",
    "nsenter",
    "unshare",
    "setsid",
    "setpriv",
    "nohup",
    "nice",
    "ionice",
    "taskset",
    "chrt",
    "timeout",
    "stdbuf",
    "flock",
    "xargs",
    "parallel",
    "watch",
    "time",
    "strace",
    "ltrace",
    "valgrind",
    "systemd-run",
    "run-parts",
    "start-stop-daemon",
    "capsh",
    "firejail",
    "bwrap",
    "at",
    "batch",
    "crontab",
    "make",
    "cc",
    "gcc",
    "tmux",
    "screen",
    // pagers and editors (shell escapes)
    "less",
    "more",
    "most",
    "pg",
    "man",
    "vi",
    "vim",
    "nvim",
    "view",
    "vimdiff",
    "rvim",
    "ex",
    "nano",
    "pico",
    "emacs",
    "joe",
    "mcedit",
    // remote execution and transfer
    "ssh",
    "scp",
    "sftp",
    "rsync",
    "socat",
    "nc",
    "ncat",
    "netcat",
    "telnet",
    "ftp",
    "tftp",
    "curl",
    "wget",
    "git",
    "mail",
    "mailx",
    // containers
    "docker",
    "podman",
    "kubectl",
    "machinectl",
    "systemd-nspawn",
    "lxc-attach",
    // package managers with hook options
    "apt",
    "apt-get",
    "aptitude",
    "yum",
    "dnf",
    "rpm",
    "pip",
    "pip3",
    "npm",
    "gem",
];

/// Whether an executable file name is a shell, interpreter or program runner.
pub fn is_interpreter(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let stem = lower.split('.').next().unwrap_or(&lower);
    let unversioned = stem.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
    [lower.as_str(), stem, unversioned]
        .iter()
        .any(|n| INTERPRETERS.contains(n))
}

/// How positional arguments are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Positional {
    /// Any argument that passes the generic rules.
    Any,
    /// An absolute path of `A-Z a-z 0-9 . _ - + @ /`.
    AbsPath,
}

/// When a pager could start and which flag prevents it.
#[derive(Debug, Clone, Copy)]
enum Pager {
    Never,
    Always(&'static str),
    For(&'static [&'static str], &'static str),
}

/// The rules of one allowlisted executable.
#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    /// Options without a value.
    flags: &'static [&'static str],
    /// Options with a value (`--opt=v`, `--opt v`, `-o v`, `-ov`).
    valued: &'static [&'static str],
    /// Valued options whose value must be an absolute path.
    path_valued: &'static [&'static str],
    /// Valued options whose value is a file mode: plain octal permissions,
    /// never setuid, setgid or sticky (no setuid copy of a binary).
    mode_valued: &'static [&'static str],
    /// Short flags may be combined (`-tulpn`).
    clusters: bool,
    /// Options are single-dash words (`find -name`).
    single_dash_long: bool,
    /// If not empty, the first positional must be one of these.
    subcommands: &'static [&'static str],
    max_positionals: usize,
    positional: Positional,
    /// At least one of these options must be present.
    require_one_of: &'static [&'static str],
    pager: Pager,
    /// The first argument must be an option (no old-style `tar cvf`).
    first_arg_option: bool,
    /// No options at all: every argument is data (echo, test).
    opaque: bool,
    /// Options refused with a specific reason.
    dangerous: &'static [(&'static str, &'static str)],
}

const BASE: Spec = Spec {
    name: "",
    flags: &[],
    valued: &[],
    path_valued: &[],
    mode_valued: &[],
    clusters: false,
    single_dash_long: false,
    subcommands: &[],
    max_positionals: usize::MAX,
    positional: Positional::Any,
    require_one_of: &[],
    pager: Pager::Never,
    first_arg_option: false,
    opaque: false,
    dangerous: &[],
};

const OPAQUE: Spec = Spec {
    opaque: true,
    ..BASE
};

const IPTABLES: Spec = Spec {
    name: "iptables",
    flags: &[
        "-n",
        "--numeric",
        "-L",
        "--list",
        "-S",
        "--list-rules",
        "-C",
        "--check",
        "-v",
        "--verbose",
        "-w",
        "--wait",
        "-x",
    ],
    valued: &[
        "-t",
        "--table",
        "-p",
        "--protocol",
        "--dport",
        "--sport",
        "-j",
        "--jump",
        "-s",
        "--source",
        "-d",
        "--destination",
        "-i",
        "--in-interface",
    ],
    require_one_of: &["-L", "--list", "-S", "--list-rules", "-C", "--check"],
    dangerous: &[("--modprobe", "runs a program to load kernel modules")],
    ..BASE
};

/// The executable allowlist.
static SPECS: &[Spec] = &[
    Spec {
        name: "systemctl",
        flags: &[
            "-q",
            "--quiet",
            "--no-pager",
            "--no-legend",
            "--failed",
            "-a",
            "--all",
            "--plain",
            "--now",
            "--no-block",
            "-l",
            "--full",
            "--system",
            "--value",
            "--no-ask-password",
        ],
        valued: &[
            "--state",
            "-t",
            "--type",
            "-p",
            "--property",
            "-n",
            "--lines",
        ],
        subcommands: &[
            "status",
            "is-active",
            "is-enabled",
            "is-failed",
            "is-system-running",
            "show",
            "cat",
            "list-units",
            "list-timers",
            "list-unit-files",
            "start",
            "stop",
            "restart",
            "reload",
            "try-restart",
            "reload-or-restart",
            "try-reload-or-restart",
            "enable",
            "disable",
            "mask",
            "unmask",
            "daemon-reload",
            "reset-failed",
        ],
        pager: Pager::For(
            &[
                "status",
                "show",
                "cat",
                "list-units",
                "list-timers",
                "list-unit-files",
            ],
            "--no-pager",
        ),
        dangerous: &[
            ("-H", "runs the command on another machine over ssh"),
            ("--host", "runs the command on another machine over ssh"),
            ("-M", "runs the command in a container"),
            ("--machine", "runs the command in a container"),
            ("--root", "operates on another root directory"),
            ("--image", "operates on a disk image"),
        ],
        ..BASE
    },
    Spec {
        name: "journalctl",
        flags: &[
            "--no-pager",
            "-q",
            "--quiet",
            "-k",
            "--dmesg",
            "-r",
            "--reverse",
            "--utc",
            "-a",
            "--all",
            "-x",
            "--catalog",
            "--no-hostname",
            "--system",
            "-m",
            "--merge",
            "-b",
            "--boot",
        ],
        valued: &[
            "-u",
            "--unit",
            "-n",
            "--lines",
            "-p",
            "--priority",
            "-S",
            "--since",
            "-U",
            "--until",
            "-o",
            "--output",
            "-b",
            "--boot",
            "-g",
            "--grep",
            "-t",
            "--identifier",
        ],
        max_positionals: 0,
        pager: Pager::Always("--no-pager"),
        dangerous: &[
            ("-e", "opens a pager, which can run programs"),
            ("--pager-end", "opens a pager, which can run programs"),
            ("-f", "never ends"),
            ("--follow", "never ends"),
            ("--vacuum-size", "deletes journal files"),
            ("--vacuum-time", "deletes journal files"),
            ("--vacuum-files", "deletes journal files"),
            ("--rotate", "changes journal state"),
            ("--flush", "changes journal state"),
            ("--sync", "changes journal state"),
            ("--relinquish-var", "changes journal state"),
            ("--smart-relinquish-var", "changes journal state"),
            ("--setup-keys", "changes journal state"),
            ("--update-catalog", "changes journal state"),
            ("-D", "reads another journal directory"),
            ("--directory", "reads another journal directory"),
            ("--file", "reads another journal file"),
            ("--root", "reads another root directory"),
            ("-M", "reads a container's journal"),
            ("--machine", "reads a container's journal"),
        ],
        ..BASE
    },
    Spec {
        name: "ufw",
        flags: &["--force", "--dry-run"],
        subcommands: &[
            "status", "allow", "deny", "reject", "limit", "delete", "prepend", "insert", "default",
            "enable", "reload", "show",
        ],
        ..BASE
    },
    IPTABLES,
    Spec {
        name: "ip6tables",
        ..IPTABLES
    },
    Spec {
        name: "sshd",
        flags: &["-t", "-T", "-q"],
        max_positionals: 0,
        require_one_of: &["-t", "-T"],
        dangerous: &[
            ("-o", "overrides sshd configuration"),
            ("-D", "starts a daemon"),
            ("-d", "starts a daemon"),
        ],
        ..BASE
    },
    Spec {
        name: "visudo",
        flags: &["-c", "--check", "-q", "--quiet", "-s", "--strict"],
        max_positionals: 0,
        require_one_of: &["-c", "--check"],
        ..BASE
    },
    Spec {
        name: "install",
        flags: &[
            "-d",
            "--directory",
            "-D",
            "-p",
            "--preserve-timestamps",
            "-C",
            "--compare",
            "-v",
            "--verbose",
        ],
        valued: &[
            "-m",
            "--mode",
            "-o",
            "--owner",
            "-g",
            "--group",
            "-t",
            "--target-directory",
        ],
        path_valued: &["-t", "--target-directory"],
        mode_valued: &["-m", "--mode"],
        positional: Positional::AbsPath,
        dangerous: &[
            ("-s", "runs strip"),
            ("--strip", "runs strip"),
            ("--strip-program", "runs a program"),
        ],
        ..BASE
    },
    Spec {
        name: "rm",
        flags: &["-f", "--force", "-v", "--verbose"],
        positional: Positional::AbsPath,
        dangerous: &[
            ("-r", "deletes recursively"),
            ("-R", "deletes recursively"),
            ("--recursive", "deletes recursively"),
            ("--no-preserve-root", "can delete /"),
        ],
        ..BASE
    },
    Spec {
        name: "mkdir",
        flags: &["-p", "--parents", "-v", "--verbose"],
        valued: &["-m", "--mode"],
        mode_valued: &["-m", "--mode"],
        positional: Positional::AbsPath,
        ..BASE
    },
    Spec {
        name: "tar",
        flags: &[
            "-c",
            "--create",
            "-z",
            "--gzip",
            "-v",
            "--verbose",
            "--ignore-failed-read",
            "--one-file-system",
            "--numeric-owner",
            "--sparse",
            "--force-local",
            "-t",
            "--list",
        ],
        valued: &["-f", "--file", "-C", "--directory", "--exclude"],
        path_valued: &["-f", "--file", "-C", "--directory"],
        first_arg_option: true,
        dangerous: &[
            ("--to-command", "runs a program"),
            ("--checkpoint-action", "runs a program"),
            (
                "--checkpoint",
                "used with --checkpoint-action to run programs",
            ),
            ("--use-compress-program", "runs a program"),
            ("-I", "runs a program as compressor"),
            ("--rsh-command", "runs a program"),
            ("--info-script", "runs a program"),
            ("--new-volume-script", "runs a program"),
            ("-F", "runs a program"),
            ("-x", "extracts over the file system"),
            ("--extract", "extracts over the file system"),
            ("--get", "extracts over the file system"),
            ("--delete", "modifies an archive"),
            ("-r", "modifies an archive"),
            ("--append", "modifies an archive"),
            ("-u", "modifies an archive"),
            ("--update", "modifies an archive"),
        ],
        ..BASE
    },
    Spec {
        name: "find",
        single_dash_long: true,
        flags: &[
            "-xdev",
            "-mount",
            "-print",
            "-print0",
            "-ls",
            "-depth",
            "-nouser",
            "-nogroup",
            "-empty",
            "-readable",
            "-writable",
            "-executable",
            "-daystart",
            "-not",
            "-and",
            "-or",
            "-a",
            "-o",
            "-true",
            "-false",
            "-prune",
        ],
        valued: &[
            "-name",
            "-iname",
            "-path",
            "-ipath",
            "-mmin",
            "-mtime",
            "-cmin",
            "-ctime",
            "-amin",
            "-atime",
            "-newer",
            "-maxdepth",
            "-mindepth",
            "-size",
            "-perm",
            "-user",
            "-group",
            "-type",
            "-newermt",
            "-uid",
            "-gid",
            "-links",
            "-inum",
        ],
        dangerous: &[
            ("-exec", "runs a program"),
            ("-execdir", "runs a program"),
            ("-ok", "runs a program"),
            ("-okdir", "runs a program"),
            ("-delete", "deletes files"),
            ("-fprint", "writes a file"),
            ("-fprint0", "writes a file"),
            ("-fprintf", "writes a file"),
            ("-fls", "writes a file"),
        ],
        ..BASE
    },
    Spec {
        name: "ss",
        flags: &[
            "-t",
            "-u",
            "-l",
            "-n",
            "-p",
            "-a",
            "-H",
            "-4",
            "-6",
            "-e",
            "-o",
            "-i",
            "-m",
            "-x",
            "-w",
            "-s",
            "--tcp",
            "--udp",
            "--listening",
            "--numeric",
            "--processes",
            "--all",
            "--no-header",
            "--extended",
            "--options",
            "--info",
            "--ipv4",
            "--ipv6",
            "--summary",
        ],
        valued: &["-A", "--query", "-f", "--family"],
        clusters: true,
        dangerous: &[
            ("-K", "kills sockets"),
            ("--kill", "kills sockets"),
            ("-D", "writes a dump file"),
            ("--diag", "writes a dump file"),
            ("-F", "reads a filter file"),
            ("--filter", "reads a filter file"),
            ("-N", "switches network namespace"),
            ("--net", "switches network namespace"),
        ],
        ..BASE
    },
    Spec {
        name: "ps",
        flags: &[
            "-e",
            "-f",
            "-F",
            "-A",
            "-H",
            "-w",
            "-l",
            "--forest",
            "--no-headers",
        ],
        valued: &["-o", "-p", "-u", "-C", "--sort"],
        clusters: true,
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "who",
        flags: &[
            "-a",
            "-b",
            "-d",
            "-H",
            "-l",
            "-q",
            "-r",
            "-t",
            "-u",
            "-m",
            "--all",
            "--heading",
        ],
        clusters: true,
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "last",
        flags: &["-F", "-w", "-x", "-i", "-a", "-R"],
        valued: &["-n"],
        max_positionals: 1,
        ..BASE
    },
    Spec {
        name: "uname",
        flags: &[
            "-a", "-s", "-n", "-r", "-v", "-m", "-p", "-i", "-o", "--all",
        ],
        clusters: true,
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "df",
        flags: &[
            "-h",
            "-H",
            "-T",
            "-i",
            "-l",
            "-P",
            "-a",
            "-k",
            "--human-readable",
            "--local",
            "--print-type",
            "--inodes",
            "--portability",
            "--all",
            "--total",
        ],
        valued: &["-x", "-t", "--exclude-type", "--type"],
        clusters: true,
        ..BASE
    },
    Spec {
        name: "id",
        flags: &[
            "-u", "-g", "-G", "-n", "-r", "-z", "--user", "--group", "--groups", "--name",
        ],
        clusters: true,
        max_positionals: 1,
        ..BASE
    },
    Spec {
        name: "uptime",
        flags: &["-p", "-s", "--pretty", "--since"],
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "hostname",
        flags: &["-f", "-s", "-i", "-I", "-d", "-A", "--fqdn", "--short"],
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "date",
        flags: &["-u", "-R", "-I", "--utc", "--iso-8601"],
        max_positionals: 0,
        ..BASE
    },
    Spec {
        name: "ls",
        flags: &[
            "-l", "-a", "-A", "-h", "-d", "-i", "-n", "-R", "-t", "-r", "-1", "-L", "-F",
        ],
        clusters: true,
        ..BASE
    },
    Spec {
        name: "stat",
        flags: &["-L", "-t", "--terse", "--dereference"],
        valued: &["-c", "--format"],
        ..BASE
    },
    Spec {
        name: "sha256sum",
        flags: &[
            "-b", "-t", "--tag", "-c", "--check", "--quiet", "--status", "--strict", "-z",
        ],
        ..BASE
    },
    Spec {
        name: "getent",
        subcommands: &[
            "passwd",
            "group",
            "hosts",
            "ahosts",
            "services",
            "protocols",
            "networks",
        ],
        ..BASE
    },
    Spec {
        name: "dpkg",
        flags: &[
            "-V",
            "--verify",
            "-C",
            "--audit",
            "-l",
            "--list",
            "-s",
            "--status",
            "--get-selections",
        ],
        valued: &["--verify-format"],
        require_one_of: &[
            "-V",
            "--verify",
            "-C",
            "--audit",
            "-l",
            "--list",
            "-s",
            "--status",
            "--get-selections",
        ],
        dangerous: &[
            ("--pre-invoke", "runs a program"),
            ("--post-invoke", "runs a program"),
            ("--root", "operates on another root"),
            ("--admindir", "operates on another database"),
            ("--instdir", "operates on another root"),
        ],
        ..BASE
    },
    Spec {
        name: "echo",
        ..OPAQUE
    },
    Spec {
        name: "test",
        ..OPAQUE
    },
    Spec {
        name: "true",
        ..OPAQUE
    },
    Spec {
        name: "false",
        ..OPAQUE
    },
    Spec {
        name: "sleep",
        max_positionals: 1,
        ..OPAQUE
    },
];

fn spec_for(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Names of the allowlisted executables (each allowed in every one of
/// [`SYSTEM_DIRS`]).
pub fn allowlisted_executables() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|s| s.name)
}

fn is_abs_path(v: &str) -> bool {
    v.starts_with('/')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '/'))
}

/// `644`, `0750`: three octal digits, optionally after a leading `0`.
fn is_plain_mode(v: &str) -> bool {
    let digits = v.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(v);
    digits.len() == 3 && digits.chars().all(|c| ('0'..='7').contains(&c))
}

impl Spec {
    fn dangerous_check(&self, opt: &str) -> Result<(), Denied> {
        let name = self.name;
        if let Some((_, why)) = self.dangerous.iter().find(|(d, _)| *d == opt) {
            return deny("forbidden_option", format!("{name} {opt}: {why}"));
        }
        // GNU getopt accepts unambiguous abbreviations of long options.
        if opt.starts_with("--") && opt.len() >= 4 {
            let abbreviates = |d: &&(&str, &str)| d.0.starts_with("--") && d.0.starts_with(opt);
            if let Some((full, why)) = self.dangerous.iter().find(abbreviates) {
                return deny(
                    "forbidden_option",
                    format!("{name} {opt} abbreviates {full}: {why}"),
                );
            }
        }
        Ok(())
    }

    fn unknown(&self, opt: &str) -> Result<(), Denied> {
        self.dangerous_check(opt)?;
        deny(
            "unknown_option",
            format!("{} does not allow the option {opt}", self.name),
        )
    }

    fn check_value(&self, opt: &str, value: Option<&String>) -> Result<(), Denied> {
        let Some(value) = value else {
            return deny(
                "missing_value",
                format!("{} {opt} needs a value", self.name),
            );
        };
        if self.path_valued.contains(&opt) && !is_abs_path(value) {
            return deny(
                "bad_path",
                format!("{} {opt} needs an absolute path, not {value:?}", self.name),
            );
        }
        if self.mode_valued.contains(&opt) && !is_plain_mode(value) {
            return deny(
                "bad_mode",
                format!(
                    "{} {opt} {value:?}: only octal permissions like 0644, without setuid, setgid or sticky bits",
                    self.name
                ),
            );
        }
        Ok(())
    }

    fn check(&self, args: &[String]) -> Result<(), Denied> {
        let name = self.name;
        if self.first_arg_option && args.first().is_some_and(|a| !a.starts_with('-')) {
            return deny(
                "old_style_options",
                format!(
                    "{name}: the first argument must be an option; old-style option words are not allowed"
                ),
            );
        }
        let mut positionals: Vec<&String> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let mut end_of_options = false;
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if self.opaque || end_of_options || !arg.starts_with('-') || arg == "-" {
                positionals.push(arg);
                continue;
            }
            if arg == "--" {
                end_of_options = true;
                continue;
            }
            if let Some(long) = arg.strip_prefix("--") {
                let (opt_name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_owned())),
                    None => (long, None),
                };
                let opt = format!("--{opt_name}");
                self.dangerous_check(&opt)?;
                if let Some(&known) = self.flags.iter().find(|f| **f == opt)
                    && inline.is_none()
                {
                    seen.push(known);
                } else if let Some(&known) = self.valued.iter().find(|f| **f == opt) {
                    let value = match inline {
                        Some(v) => Some(v),
                        None => {
                            i += 1;
                            args.get(i - 1).cloned()
                        }
                    };
                    self.check_value(known, value.as_ref())?;
                    seen.push(known);
                } else {
                    self.unknown(&opt)?;
                }
                continue;
            }
            if let Some(&known) = self.flags.iter().find(|f| **f == arg.as_str()) {
                seen.push(known);
                continue;
            }
            if let Some(&known) = self.valued.iter().find(|f| **f == arg.as_str()) {
                i += 1;
                self.check_value(known, args.get(i - 1))?;
                seen.push(known);
                continue;
            }
            if self.single_dash_long {
                self.unknown(arg)?;
                continue;
            }
            // Short options: a cluster of flags (when allowed), possibly
            // ending in a valued option whose value is the rest or the next
            // argument, as getopt reads them.
            let body = &arg[1..];
            let mut refused: Option<String> = None;
            for (j, c) in body.char_indices() {
                let opt = format!("-{c}");
                self.dangerous_check(&opt)?;
                let rest = &body[j + c.len_utf8()..];
                if let Some(&known) = self.valued.iter().find(|f| **f == opt) {
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i - 1).cloned()
                    } else {
                        Some(rest.to_owned())
                    };
                    self.check_value(known, value.as_ref())?;
                    seen.push(known);
                    break;
                }
                let flag = self.flags.iter().find(|f| **f == opt);
                match flag {
                    Some(&known) if self.clusters || body.len() == 1 => seen.push(known),
                    // Keep reading: a later letter may be a dangerous option,
                    // which gets the more specific reason.
                    _ => {
                        if refused.is_none() {
                            refused = Some(if body.len() > 1 {
                                format!("{opt} (in {arg})")
                            } else {
                                opt
                            });
                        }
                    }
                }
            }
            if let Some(shown) = refused {
                return self.unknown(&shown);
            }
        }

        let mut data = positionals.as_slice();
        if !self.subcommands.is_empty() {
            match positionals.first() {
                None => {
                    return deny(
                        "missing_subcommand",
                        format!("{name} needs a subcommand: {}", self.subcommands.join(", ")),
                    );
                }
                Some(sub) if !self.subcommands.contains(&sub.as_str()) => {
                    return deny(
                        "subcommand_not_allowed",
                        format!(
                            "{name} {sub} is not allowed; allowed: {}",
                            self.subcommands.join(", ")
                        ),
                    );
                }
                Some(_) => data = &positionals[1..],
            }
        }
        if data.len() > self.max_positionals {
            return deny(
                "too_many_arguments",
                format!(
                    "{name} takes at most {} argument(s) here",
                    self.max_positionals
                ),
            );
        }
        if self.positional == Positional::AbsPath
            && let Some(bad) = data.iter().find(|p| !is_abs_path(p))
        {
            return deny(
                "bad_path",
                format!("{name} takes absolute paths of A-Z a-z 0-9 . _ - + @ /, not {bad:?}"),
            );
        }
        if !self.require_one_of.is_empty() && !self.require_one_of.iter().any(|r| seen.contains(r))
        {
            return deny(
                "missing_required_option",
                format!(
                    "{name} needs one of {} here",
                    self.require_one_of.join(", ")
                ),
            );
        }
        let pager_flag = match self.pager {
            Pager::Never => None,
            Pager::Always(flag) => Some(flag),
            Pager::For(subs, flag) => positionals
                .first()
                .filter(|s| subs.contains(&s.as_str()))
                .map(|_| flag),
        };
        if let Some(flag) = pager_flag
            && !seen.contains(&flag)
        {
            return deny(
                "pager_possible",
                format!("{name} must be given {flag}: a pager can run programs"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn verdict(words: &[&str]) -> Result<(), &'static str> {
        check_argv(&argv(words), &GuardPolicy::default()).map_err(|d| d.code)
    }

    #[test]
    fn interpreter_names_with_versions() {
        for n in [
            "sh",
            "bash",
            "python3",
            "python3.12",
            "perl5.36",
            "vim.basic",
            "PHP8.2",
            "lua5.4",
            "env",
        ] {
            assert!(is_interpreter(n), "{n}");
        }
        for n in ["systemctl", "ss", "test", "install", "shred"] {
            assert!(!is_interpreter(n), "{n}");
        }
    }

    #[test]
    fn getopt_style_short_options() {
        assert_eq!(verdict(&["/usr/bin/ss", "-tulpn"]), Ok(()));
        assert_eq!(verdict(&["/usr/bin/ss", "-tulK"]), Err("forbidden_option"));
        assert_eq!(verdict(&["/usr/bin/ps", "-eo", "pid,args"]), Ok(()));
        assert_eq!(verdict(&["/usr/bin/ps", "-e", "-o"]), Err("missing_value"));
        assert_eq!(
            verdict(&["/usr/bin/tar", "-czf", "/tmp/x.tgz", "etc"]),
            Err("unknown_option")
        );
        assert_eq!(
            verdict(&["/usr/bin/tar", "-cIf", "x", "etc"]),
            Err("forbidden_option")
        );
        assert_eq!(
            verdict(&["/usr/bin/journalctl", "--no-pager", "-n50"]),
            Ok(())
        );
    }

    #[test]
    fn modes_are_plain_permissions() {
        for ok in ["644", "0644", "0700", "755"] {
            assert!(is_plain_mode(ok), "{ok}");
        }
        for bad in ["4755", "2755", "1777", "u+s", "0", "07555", "0888", ""] {
            assert!(!is_plain_mode(bad), "{bad}");
        }
    }

    #[test]
    fn abbreviations_of_dangerous_long_options_are_refused() {
        assert_eq!(
            verdict(&[
                "/usr/bin/tar",
                "--create",
                "--to-com=x",
                "--file=/tmp/a",
                "etc"
            ]),
            Err("forbidden_option")
        );
        assert_eq!(
            verdict(&["/usr/bin/journalctl", "--no-pager", "--vacuum"]),
            Err("forbidden_option")
        );
    }

    #[test]
    fn regexes_apply_to_the_joined_argv() {
        let block = GuardPolicy {
            blocklist_regex: crate::policy::GuardRegex::new("restart ssh").ok(),
            ..GuardPolicy::default()
        };
        let cmd = argv(&["/usr/bin/systemctl", "restart", "ssh.service"]);
        assert_eq!(
            check_argv(&cmd, &block).map_err(|d| d.code).err(),
            Some("blocklisted")
        );
        let allow = GuardPolicy {
            allowlist_regex: crate::policy::GuardRegex::new(
                "^/usr/bin/systemctl (status|is-active) ",
            )
            .ok(),
            ..GuardPolicy::default()
        };
        assert_eq!(
            check_argv(&cmd, &allow).map_err(|d| d.code).err(),
            Some("allowlist_regex")
        );
        let ok = argv(&["/usr/bin/systemctl", "is-active", "ssh.service"]);
        assert!(check_argv(&ok, &allow).is_ok());
        let off = GuardPolicy {
            enforce_allowlist: false,
            ..allow
        };
        assert!(
            check_argv(&cmd, &off).is_ok(),
            "allowlist regex only when enforced"
        );
    }

    #[test]
    fn enforce_allowlist_off_still_holds_the_fixed_rules() {
        let off = GuardPolicy {
            enforce_allowlist: false,
            ..GuardPolicy::default()
        };
        let ok = |w: &[&str]| check_argv(&argv(w), &off).map_err(|d| d.code);
        assert_eq!(ok(&["/usr/bin/lsblk"]), Ok(()));
        assert_eq!(ok(&["/usr/bin/bash", "-c", "id"]), Err("interpreter"));
        assert_eq!(ok(&["/usr/local/bin/lsblk"]), Err("untrusted_location"));
        assert_eq!(
            ok(&["/usr/bin/gfind", "/", "-exec", "id"]),
            Err("forbidden_option")
        );
        assert_eq!(
            ok(&["/usr/bin/systemctl", "edit", "ssh"]),
            Err("subcommand_not_allowed")
        );
    }

    #[test]
    fn too_many_commands_is_one_issue() {
        let g = GuardPolicy {
            max_commands_per_action: 2,
            ..GuardPolicy::default()
        };
        let cmds = vec![argv(&["/usr/bin/true"]); 3];
        let issues = check(&cmds, CommandKind::Rollback, &g);
        assert_eq!(issues.len(), 1);
        assert_eq!((issues[0].index, issues[0].code), (2, "too_many_commands"));
        assert_eq!(
            issues[0].to_string(),
            "rollback command 2: 3 rollback commands; at most 2 allowed (maxCommandsPerAction)"
        );
    }
}
