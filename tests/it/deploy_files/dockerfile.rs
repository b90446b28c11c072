//! `docker/Dockerfile`: built the way the README says, and its health check command works.

use super::*;

/// One Dockerfile instruction, continuation lines joined.
pub(super) struct Step {
    /// 1 for the first FROM's stage, 2 for the next, ...
    stage: usize,
    keyword: String,
    rest: String,
}

pub(super) fn dockerfile() -> Vec<Step> {
    let text = read(&docker_dir().join("Dockerfile"));
    let (mut steps, mut stage, mut current) = (Vec::new(), 0, String::new());
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        steps.push(Step {
            stage,
            keyword,
            rest: rest.trim().to_string(),
        });
        current.clear();
    }
    steps
}

/// The runtime (last) stage's last `keyword` instruction.
fn runtime<'a>(steps: &'a [Step], keyword: &str) -> Option<&'a str> {
    let last = steps.iter().map(|s| s.stage).max()?;
    steps
        .iter()
        .rev()
        .find(|s| s.stage == last && s.keyword == keyword)
        .map(|s| s.rest.as_str())
}

/// An exec-form (JSON array) command.
fn exec_form(what: &str, text: &str) -> Vec<String> {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{what} is not in exec form (a JSON array): {text}"))
}

/// The HEALTHCHECK's command.
fn healthcheck(steps: &[Step]) -> Vec<String> {
    let check = runtime(steps, "HEALTHCHECK").expect("no HEALTHCHECK in the runtime stage");
    let (_, command) = check
        .split_once("CMD")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {check}"));
    exec_form("HEALTHCHECK CMD", command)
}

/// The uid the runtime stage runs as.
pub(super) fn image_uid(steps: &[Step]) -> String {
    let user = runtime(steps, "USER").expect("no USER in the runtime stage");
    user.split(':').next().unwrap_or_default().to_string()
}

/// The image builds with the README's own steps (scripts/deps --build-only, then cargo build
/// --release --locked), runs as a non-root user, checks its health with `aoai-proxy health`
/// in exec form, and its default configuration passes `--test` on the ports it exposes.
#[test]
fn dockerfile_builds_the_way_the_readme_says() {
    let steps = dockerfile();
    let last = steps.iter().map(|s| s.stage).max().expect("no FROM");
    assert!(last >= 2, "not a multi-stage build");
    let readme = read(&root().join("README.md"));
    let build = steps
        .iter()
        .find(|s| s.stage < last && s.keyword == "RUN" && s.rest.contains("cargo build"))
        .expect("no RUN with cargo build in a build stage");
    for command in [
        "scripts/deps --build-only",
        "cargo build --release --locked",
    ] {
        assert!(
            build.rest.contains(command),
            "the build RUN lacks {command}: {}",
            build.rest
        );
        assert!(readme.contains(command), "README.md does not say {command}");
    }

    let uid = image_uid(&steps);
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "the runtime stage runs as {uid:?}"
    );
    let entrypoint = exec_form(
        "ENTRYPOINT",
        runtime(&steps, "ENTRYPOINT").expect("no ENTRYPOINT"),
    );
    let check = healthcheck(&steps);
    assert_eq!(
        check.first(),
        entrypoint.first(),
        "HEALTHCHECK runs another binary"
    );
    assert_eq!(
        check.get(1).map(String::as_str),
        Some("health"),
        "{check:?}"
    );
    assert!(check.iter().any(|a| a == "--url"), "{check:?}");

    // The binary and the default configuration are copied where ENTRYPOINT and CMD look.
    let copies: Vec<Vec<&str>> = steps
        .iter()
        .filter(|s| s.stage == last && s.keyword == "COPY")
        .map(|s| s.rest.split_whitespace().collect())
        .collect();
    let copied_to = |dest: &str| {
        copies
            .iter()
            .find(|c| c.last() == Some(&dest))
            .unwrap_or_else(|| panic!("nothing is copied to {dest}"))
    };
    assert!(copied_to(entrypoint[0].as_str())[0].starts_with("--from="));
    let cmd = exec_form("CMD", runtime(&steps, "CMD").expect("no CMD"));
    let config_path = flag_values(&cmd, "--config")
        .pop()
        .expect("no --config in CMD");
    let copy = copied_to(config_path.as_str());
    assert!(!copy[0].starts_with("--from="), "{copy:?}");
    let config_file = root().join(copy[0]);
    assert_valid_config(&config_file, &[]);
    let (listen, admin) = container_listeners(&yaml(&config_file), copy[0]);
    let exposed: BTreeSet<u16> = runtime(&steps, "EXPOSE")
        .expect("no EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("a port"))
        .collect();
    for p in listen.iter().chain([&admin]) {
        assert!(exposed.contains(p), "port {p} is not EXPOSEd ({exposed:?})");
    }
    assert!(
        check
            .iter()
            .any(|a| a.contains(&format!("127.0.0.1:{admin}/readyz"))),
        "HEALTHCHECK does not ask the admin listener's /readyz: {check:?}"
    );
}

/// The image's HEALTHCHECK command, run as written against a proxy: 0 once it is ready, 1 when
/// nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_command_works() {
    let check = healthcheck(&dockerfile());
    let id = identity().await;
    let b = backend("b0").await;
    let proxy = Proxy::start(&mi_yaml(&[&b]), Some(&id));
    let dead = DeadPort::new();
    let run = |port: u16| {
        let args = check[1..]
            .iter()
            .map(|a| a.replace("127.0.0.1:9090", &format!("127.0.0.1:{port}")));
        Command::new(env!("CARGO_BIN_EXE_aoai-proxy"))
            .args(args)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .expect("cannot run aoai-proxy health")
    };
    let ok = run(proxy.admin);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(run(dead.port).status.code(), Some(1));
}
