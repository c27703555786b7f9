use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;

fn shell(config: &str) -> Shell {
    let node = yaml::parse(config).unwrap();
    Shell::new(read(&node, "export.sh.config").unwrap())
}

async fn run_all(driver: &Shell, args: Vec<Json>) -> Vec<Json> {
    let stream = driver.streaming_call("call_method", args).await.unwrap();
    stream.map(|r| r.unwrap()).collect().await
}

fn joined(items: &[Json], index: usize) -> String {
    items
        .iter()
        .map(|i| i[index].as_str().unwrap().to_string())
        .collect()
}

fn config_error(config: &str) -> String {
    let node = yaml::parse(config).unwrap();
    match spec(&node, "export.sh.config") {
        Ok(_) => panic!("accepted: {config}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_keeps_method_order_and_descriptions_and_refuses_what_cannot_run() {
    let node = yaml::parse(
        "methods:\n  zeta: 'echo z'\n  alpha: {command: 'echo a', description: says a, timeout: 2}\n  mid: 'true'\n",
    )
    .unwrap();
    let s = spec(&node, "export.sh.config").unwrap();
    assert_eq!(
        s.methods_description(),
        vec![("alpha".to_string(), "says a".to_string())]
    );
    let e = config_error("methods:\n  a: {description: no command}\n");
    assert!(
        e.contains("export.sh.config.methods.a") && e.contains("command"),
        "{e}"
    );
    let e = config_error("methods:\n  a: '  '\n");
    assert!(e.contains("empty command"), "{e}");
    let e = config_error("methods: {a: 'true'}\nshell: []\n");
    assert!(e.contains("shell"), "{e}");
    let e = config_error("methods: {a: 'true'}\ntimeout: 0\n");
    assert!(e.contains("timeout"), "{e}");
    let e = config_error("methods: {a: {command: 'true', timeout: -1}}\n");
    assert!(e.contains("methods.a"), "{e}");
    let e = config_error("methods: {a: 'true'}\nshel: [sh, -c]\n");
    assert!(e.contains("shel"), "{e}");
    let e = config_error("shell: [sh, -c]\n");
    assert!(e.contains("methods"), "{e}");
}

#[tokio::test]
async fn get_methods_answers_in_config_order() {
    let d = shell("methods:\n  zeta: 'echo z'\n  alpha: 'echo a'\n");
    assert_eq!(
        d.call("get_methods", vec![]).await.unwrap(),
        json!(["zeta", "alpha"])
    );
}

#[tokio::test]
async fn a_script_sees_its_name_args_and_env_and_its_output_and_code_come_back() {
    let d = shell("methods:\n  greet: 'echo \"$0 $1 $2 $GREETING\"; echo warn >&2; exit 3'\n");
    let items = run_all(
        &d,
        vec![
            json!("greet"),
            json!({"GREETING": "hi"}),
            json!("a b"),
            json!("c"),
        ],
    )
    .await;
    assert_eq!(joined(&items, 0), "greet a b c hi\n");
    assert_eq!(joined(&items, 1), "warn\n");
    let (last, rest) = items.split_last().unwrap();
    assert_eq!(last[2], json!(3), "{items:?}");
    assert!(rest.iter().all(|i| i[2].is_null()), "{items:?}");
}

#[tokio::test]
async fn output_arrives_as_it_is_written() {
    let d = shell("methods:\n  slow: 'echo first; sleep 20; echo never'\n");
    let mut stream = d
        .streaming_call("call_method", vec![json!("slow"), json!({})])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first line while the script still runs")
        .unwrap()
        .unwrap();
    assert_eq!(first, json!(["first\n", "", null]));
    drop(stream);
    d.close().await;
}

#[tokio::test]
async fn the_environment_filter_refuses_each_forbidden_name() {
    let d = shell("methods:\n  m: 'true'\n");
    for name in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PATH",
        "PYTHONPATH",
        "BASH_ENV",
        "KUBECONFIG",
        "HOME",
        "LD_AUDIT",
        "BASH_FUNC_x%%",
    ] {
        let e = d
            .streaming_call("call_method", vec![json!("m"), json!({ name: "x" })])
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert!(
            matches!(&e, DriverError::InvalidArgument(m) if m.contains(name)),
            "{name}: {e:?}"
        );
    }
    let e = d
        .streaming_call("call_method", vec![json!("m"), json!({"1BAD": "x"})])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, DriverError::InvalidArgument(m) if m == "Invalid environment variable name: 1BAD"),
        "{e:?}"
    );
    let e = d
        .streaming_call("call_method", vec![json!("m"), json!({}), json!(5)])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, DriverError::InvalidArgument(m) if m == "All arguments must be strings, got <class 'int'>"),
        "{e:?}"
    );
    let e = d
        .streaming_call("call_method", vec![json!("nope"), json!({})])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, DriverError::InvalidArgument(m) if m == "Method 'nope' not found in available methods: ['m']"),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_missing_working_directory_is_refused_at_the_call() {
    let d = shell("methods: {m: 'true'}\ncwd: /nonexistent/dir\n");
    let e = d
        .streaming_call("call_method", vec![json!("m"), json!(null)])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, DriverError::InvalidArgument(m) if m.contains("/nonexistent/dir")),
        "{e:?}"
    );
}

/// Whether a process is gone (a zombie nobody reaps counts as gone: it runs nothing).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: i32, within: Duration) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gone(pid)
}

#[tokio::test]
async fn a_script_past_its_timeout_is_terminated_then_killed_with_upstreams_last_item() {
    let d = shell(
        "methods:\n  stubborn: {command: 'trap \"\" TERM; sleep 30 & echo $!; wait; wait', timeout: 0.5}\n",
    );
    let items = run_all(&d, vec![json!("stubborn"), json!({})]).await;
    let pid: i32 = items[0][0].as_str().unwrap().trim().parse().unwrap();
    let last = items.last().unwrap();
    assert_eq!(last[2], json!(199), "{items:?}");
    assert_eq!(last[0], json!(""));
    assert_eq!(
        last[1],
        json!(format!(
            "\nTimeout expired while running stubborn: Command '['bash', '-c', 'trap \"\" TERM; sleep 30 & echo $!; wait; wait', 'stubborn']' timed out after 0.5 seconds\n"
        ))
    );
    assert!(
        wait_gone(pid, Duration::from_secs(1)).await,
        "the group's sleep was killed"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_scripts_process_group() {
    let d = shell("methods:\n  bg: 'sleep 30 & echo $!; wait'\n");
    let mut stream = d
        .streaming_call("call_method", vec![json!("bg"), json!({})])
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let pid: i32 = first[0].as_str().unwrap().trim().parse().unwrap();
    assert!(!gone(pid));
    drop(stream);
    assert!(
        wait_gone(pid, Duration::from_secs(1)).await,
        "the script's child outlived its client"
    );
}

#[tokio::test]
async fn no_script_outlives_the_session() {
    let d = shell("methods:\n  daemon: 'sleep 30 >/dev/null 2>&1 & echo $!'\n");
    let items = run_all(&d, vec![json!("daemon"), json!({})]).await;
    assert_eq!(items.last().unwrap()[2], json!(0));
    let pid: i32 = items[0][0].as_str().unwrap().trim().parse().unwrap();
    assert!(
        !gone(pid),
        "a background process lives on during the session"
    );
    d.close().await;
    assert!(gone(pid), "the session's end took it");
}

#[test]
fn text_is_split_only_between_characters() {
    let mut pipe = run::Utf8Pipe::default();
    let snowman = "☃".as_bytes();
    assert_eq!(pipe.push(&[b'a', snowman[0]], false), "a");
    assert_eq!(pipe.push(&snowman[1..], false), "☃");
    assert_eq!(pipe.push(&[0xff, b'b'], false), "\u{FFFD}b");
    assert_eq!(pipe.push(&[snowman[0]], true), "\u{FFFD}");
}

#[test]
fn python_quoting_matches_upstreams_messages() {
    assert_eq!(python_repr("a'b"), "\"a'b\"");
    assert_eq!(python_repr("a\"b'"), "'a\"b\\''");
    assert_eq!(python_list(&["x".into(), "y z".into()]), "['x', 'y z']");
    assert_eq!(python_seconds(300.0), "300");
    assert_eq!(python_seconds(0.5), "0.5");
}
