//! POSIX shell quoting, and the `/bin/sh -c` wrapper that gives the exec stream (whose `start`
//! message has no cwd or envs) a working directory and environment variables.

use crate::error::{CliError, CliResult};

/// Quotes a word for a POSIX shell: unchanged when it is made only of safe characters, else in
/// single quotes with each `'` written as `'\''`.
pub fn quote(word: &str) -> String {
    let is_safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(is_safe) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// An environment assignment `KEY=VALUE` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for EnvVar {
    type Err = String;

    /// `KEY` must be a shell identifier (it is `export`ed by the wrapper).
    fn from_str(assignment: &str) -> Result<Self, Self::Err> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {assignment:?}"))?;
        let mut chars = key.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid variable name {key:?}: use letters, digits and _, not starting with a digit"
            ));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// The program and arguments to put in the exec stream's `start` frame. Without cwd or envs the
/// command goes as is (`cmd` = first word, `args` = the rest); with them it becomes
/// `/bin/sh -c 'cd DIR && export K=V && exec "$@"' sh CMD ARGS…`, so the command's own words are
/// passed as positional parameters and never re-parsed by the shell.
pub fn stream_command(
    command: &[String],
    cwd: Option<&str>,
    envs: &[EnvVar],
) -> CliResult<(String, Vec<String>)> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| CliError::Usage("missing command to run".into()))?;
    if cwd.is_none() && envs.is_empty() {
        return Ok((program.clone(), rest.to_vec()));
    }
    let mut steps = Vec::new();
    if let Some(dir) = cwd {
        steps.push(format!("cd {}", quote(dir)));
    }
    if !envs.is_empty() {
        let assignments: Vec<String> = envs
            .iter()
            .map(|var| format!("{}={}", var.key, quote(&var.value)))
            .collect();
        steps.push(format!("export {}", assignments.join(" ")));
    }
    steps.push(r#"exec "$@""#.to_owned());
    let mut args = vec!["-c".to_owned(), steps.join(" && "), "sh".to_owned()];
    args.extend(command.iter().cloned());
    Ok(("/bin/sh".to_owned(), args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_leaves_safe_words_and_wraps_the_rest() {
        assert_eq!(quote("abc/d-e.f"), "abc/d-e.f");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn env_var_parsing() {
        let var: EnvVar = "A_1=x=y".parse().expect("valid");
        assert_eq!(var.key, "A_1");
        assert_eq!(var.value, "x=y");
        assert!("1A=x".parse::<EnvVar>().is_err());
        assert!("A-B=x".parse::<EnvVar>().is_err());
        assert!("NOEQUALS".parse::<EnvVar>().is_err());
    }

    #[test]
    fn plain_command_is_not_wrapped() {
        let command = vec!["ls".to_owned(), "-l".to_owned(), "a b".to_owned()];
        let (cmd, args) = stream_command(&command, None, &[]).expect("command");
        assert_eq!(cmd, "ls");
        assert_eq!(args, vec!["-l", "a b"]);
        assert!(stream_command(&[], None, &[]).is_err());
    }

    /// Runs the wrapper through the local `/bin/sh`, with values that break naive quoting, and
    /// checks the command sees the directory, the variables and its arguments verbatim.
    #[test]
    fn wrapper_runs_in_a_real_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let odd_dir = dir.path().join("it's a $dir");
        std::fs::create_dir(&odd_dir).expect("mkdir");
        let envs = vec![
            "GREETING=hello 'quoted' $world \"x\"".parse().expect("env"),
            "EMPTY=".parse().expect("env"),
        ];
        let command: Vec<String> = [
            "/bin/sh",
            "-c",
            r#"pwd; printf '%s|' "$GREETING" "[$EMPTY]" "$@""#,
            "inner",
            "arg one",
            "$(touch pwned)",
        ]
        .map(String::from)
        .to_vec();
        let odd_dir_text = odd_dir.to_str().expect("utf-8 path");
        let (cmd, args) = stream_command(&command, Some(odd_dir_text), &envs).expect("wrap");
        assert_eq!(cmd, "/bin/sh");
        let output = std::process::Command::new(&cmd)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("run sh");
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        assert_eq!(
            stdout,
            format!("{odd_dir_text}\nhello 'quoted' $world \"x\"|[]|arg one|$(touch pwned)|")
        );
        assert!(!odd_dir.join("pwned").exists());
    }
}
