//! The real `pullthrough` binary as a child process: a server ([`ServerProcess`], killed when
//! dropped) or a command run to its end ([`run`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// The binary in Lambda mode against the runtime API at `api_address` (a
/// [`RuntimeApi`](super::runtime_api::RuntimeApi)), with a clean environment: what Lambda sets,
/// the S3 test credentials, nothing inherited. Callers add the store, the configuration and
/// their endpoints.
pub fn lambda_command(api_address: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api_address)
        .env("AWS_LAMBDA_FUNCTION_NAME", super::lambda::FUNCTION_NAME)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .envs(super::s3::AWS_ENV);
    cmd
}

/// `pullthrough serve` on 127.0.0.1:0, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
}

/// Everything a server wrote to stderr and stdout (where its log goes) until it exited: join it
/// after [`ServerProcess::kill`].
pub type ServerLog = JoinHandle<String>;

impl ServerProcess {
    /// Starts `pullthrough serve --listen 127.0.0.1:0 <args>` (log level `warn`) and waits for it
    /// to say where it listens.
    pub async fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_with_env(args, &[]).await
    }

    /// [`ServerProcess::start`] with extra environment variables (log level `warn` unless they
    /// set `RUST_LOG`).
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_logged(args, env).await.0
    }

    /// [`ServerProcess::start_with_env`], and its log.
    pub async fn start_logged(args: &[&str], env: &[(&str, &str)]) -> (ServerProcess, ServerLog) {
        let mut all = vec![("RUST_LOG", "warn")];
        all.extend_from_slice(env);
        ServerProcess::launch(args, &all, false)
            .await
            .unwrap_or_else(|(code, log)| {
                panic!("pullthrough exited ({code:?}) before serving:\n{log}")
            })
    }

    /// [`ServerProcess::start_logged`] with nothing inherited from the test's environment: only
    /// `env`. `Err` holds the exit code and output of a process that stopped instead of serving.
    pub async fn try_start_clean(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(ServerProcess, ServerLog), (Option<i32>, String)> {
        ServerProcess::launch(args, env, true).await
    }

    async fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        clean_env: bool,
    ) -> Result<(ServerProcess, ServerLog), (Option<i32>, String)> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        if clean_env {
            cmd.env_clear();
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pullthrough");
        let mut stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Both pipes are read to their end, so the server never blocks on a full one; the
        // stderr reader says where the server listens as soon as it prints it.
        let (serving_tx, serving) = tokio::sync::oneshot::channel();
        let log = std::thread::spawn(move || {
            let out = std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stdout.read_to_string(&mut text);
                text
            });
            let mut serving_tx = Some(serving_tx);
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("pullthrough: serving on ")
                    && let Some(tx) = serving_tx.take()
                {
                    let _ = tx.send(url.to_owned());
                }
                log.push_str(&line);
                log.push('\n');
            }
            drop(serving_tx);
            log.push_str(&out.join().unwrap_or_default());
            log
        });
        match tokio::time::timeout(Duration::from_secs(30), serving).await {
            Ok(Ok(url)) => Ok((ServerProcess { child, url }, log)),
            // Its stderr ended without the line: it stopped.
            Ok(Err(_)) => {
                let status = child.wait().expect("exit status");
                Err((status.code(), log.join().unwrap_or_default()))
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pullthrough neither served nor stopped within 30 s:\n{}",
                    log.join().unwrap_or_default()
                );
            }
        }
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a command run to its end left.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `pullthrough <args>` to its end, with `env` added to the test's environment.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_pullthrough"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run pullthrough");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `toml` as `dir/pullthrough.toml`, for a binary's `--config`.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("pullthrough.toml");
    std::fs::write(&path, toml).expect("write the config file");
    path
}
