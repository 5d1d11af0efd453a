//! The Helm chart (helm/tollgate), with no cluster: `tests/python/chart.py`
//! lints and renders it with the real Helm library (libhelm v4, as `helm
//! install` would, values.schema.json included) and validates every manifest
//! strictly against the Kubernetes 1.37 schemas; `contract` then runs the
//! real binaries exactly as the rendered manifests say.
mod contract;
mod manifests;
mod schema;

use std::{path::Path, process::Command};

use serde_json::{Value, json};

use crate::helpers::venv;

const PROJECT: &str = env!("CARGO_MANIFEST_DIR");
const MONITORING: &[&str] = &["monitoring.coreos.com/v1"];

/// Runs `chart.py <args>`; returns whether it succeeded and the JSON object
/// it printed.
fn chart_py(args: &[&str]) -> (bool, Value) {
    let out = Command::new(venv().join("bin/python"))
        .arg(Path::new(PROJECT).join("tests/python/chart.py"))
        .args(args)
        .output()
        .expect("running tests/python/chart.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "chart.py {args:?} printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), printed)
}

/// `chart.py <command> --values-json <values> [--api-versions <api>]...`
fn chart_py_values(command: &str, values: &Value, api_versions: &[&str]) -> (bool, Value) {
    let values = values.to_string();
    let mut args = vec![command, "--values-json", &values];
    for api in api_versions {
        args.extend(["--api-versions", api]);
    }
    chart_py(&args)
}

/// Every manifest the chart renders with these values (hooks and the test
/// pod included), as `helm install` would against a cluster serving
/// `api_versions`; Err: Helm's message (a schema refusal, a template `fail`).
pub fn render(values: Value, api_versions: &[&str]) -> Result<Vec<Value>, String> {
    let (ok, printed) = chart_py_values("render", &values, api_versions);
    match (ok, printed) {
        (true, Value::Object(mut o)) if o.contains_key("manifests") => {
            Ok(serde_json::from_value(o.remove("manifests").unwrap()).expect("a list"))
        }
        (_, printed) => Err(printed["error"]
            .as_str()
            .unwrap_or_else(|| panic!("chart.py render: {printed}"))
            .to_owned()),
    }
}

/// The manifests of `helm install` with these `--set` expressions, each
/// strictly valid against Kubernetes 1.37; Err: Helm's message.
pub fn render_sets(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["validate"];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, printed) = chart_py(&args);
    if let Some(error) = printed["error"].as_str() {
        return Err(error.to_owned());
    }
    assert!(ok, "invalid manifests for {sets:?}:\n{printed:#}");
    args[0] = "render";
    let (_, printed) = chart_py(&args);
    Ok(serde_json::from_value(printed["manifests"].clone()).expect("a list"))
}

/// Renders, after checking every manifest strictly against Kubernetes 1.37.
fn render_valid(values: Value, api_versions: &[&str]) -> Vec<Value> {
    let (ok, printed) = chart_py_values("validate", &values, api_versions);
    assert!(ok, "invalid manifests for {values}:\n{printed:#}");
    let results = printed["results"].as_array().expect("results");
    assert!(!results.is_empty());
    render(values, api_versions).expect("rendering")
}

fn refused(values: Value) -> String {
    match render(values.clone(), &[]) {
        Ok(_) => panic!("the chart accepted {values}"),
        Err(e) => e,
    }
}

fn component(m: &Value) -> &str {
    m["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap_or_default()
}

fn all<'a>(manifests: &'a [Value], kind: &str, component_: &str) -> Vec<&'a Value> {
    manifests
        .iter()
        .filter(|m| m["kind"] == kind && component(m) == component_)
        .collect()
}

/// The one manifest of this kind and component (server, polar, migrate,
/// dashboard, test); panics if there are none or several (the server's two
/// Services: use `named`).
pub fn find<'a>(manifests: &'a [Value], kind: &str, component: &str) -> &'a Value {
    match all(manifests, kind, component).as_slice() {
        [one] => one,
        found => panic!(
            "{} {kind} of component {component} among {:?}",
            found.len(),
            summary(manifests)
        ),
    }
}

fn named<'a>(manifests: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests
        .iter()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", summary(manifests)))
}

fn has(manifests: &[Value], kind: &str) -> bool {
    manifests.iter().any(|m| m["kind"] == kind)
}

fn summary(manifests: &[Value]) -> Vec<String> {
    manifests
        .iter()
        .map(|m| format!("{} {} ({})", m["kind"], m["metadata"]["name"], component(m)))
        .collect()
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container(workload: &Value) -> &Value {
    &pod_spec(workload)["containers"][0]
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name} in {:#}", container["env"]))
}

fn secret_ref(container: &Value, name: &str) -> (String, String) {
    let r = &env(container, name)["valueFrom"]["secretKeyRef"];
    (
        r["name"].as_str().expect("name").to_owned(),
        r["key"].as_str().expect("key").to_owned(),
    )
}

fn annotation<'a>(m: &'a Value, name: &str) -> &'a str {
    m["metadata"]["annotations"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no annotation {name} on {}", m["metadata"]["name"]))
}

fn hook_weight(m: &Value) -> i64 {
    annotation(m, "helm.sh/hook-weight")
        .parse()
        .expect("a number")
}

/// The value of `key` in the flat config.toml the chart writes (toToml puts
/// one `key = value` per line).
fn setting<'a>(configmap: &'a Value, key: &str) -> Option<&'a str> {
    configmap["data"]["config.toml"]
        .as_str()
        .expect("config.toml")
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

fn base64_decode(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

fn production_urls() -> Value {
    json!({
        "replicaCount": 3,
        "database": {"url": "postgres://tollgate:pw@pg:5432/tollgate"},
        "redis": {"url": "redis://redis:6379"},
    })
}

/// What every pod of the chart must hold to: the restricted Pod Security
/// Standard, no API token, no injected service variables.
fn assert_restricted(pod: &Value) {
    let what = pod.to_string();
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["runAsUser"], 10001);
    assert_eq!(sc["runAsGroup"], 10001);
    assert_eq!(sc["fsGroup"], 10001);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    assert_eq!(pod["enableServiceLinks"], false, "{what}");
    for c in pod["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{c}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    }
}

/// The server Deployment's facts common to every mode.
fn assert_server(manifests: &[Value]) {
    let deployment = find(manifests, "Deployment", "server");
    let pod = pod_spec(deployment);
    assert_restricted(pod);
    let c = container(deployment);
    assert_eq!(c["command"], json!(["tollgate", "serve"]));
    let grpc_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .expect("a grpc port")["containerPort"]
        .clone();
    assert_eq!(grpc_port, 50051);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"], grpc_port, "{probe}: {}", c[probe]);
    }
    // The config file: listening where the probes look, read from the mount.
    let configmap = find(manifests, "ConfigMap", "server");
    assert_eq!(setting(configmap, "listen"), Some("\"0.0.0.0:50051\""));
    assert_eq!(setting(configmap, "log_format"), Some("\"json\""));
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("config mount");
    let config_path = env(c, "TOLLGATE_CONFIG")["value"].as_str().unwrap();
    assert_eq!(
        format!("{}/config.toml", mount["mountPath"].as_str().unwrap()),
        config_path
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    // Draining: the kubelet waits longer than the preStop pause plus the
    // server's own grace period.
    let grace: i64 = setting(configmap, "shutdown_grace_seconds")
        .expect("shutdown_grace_seconds")
        .parse()
        .expect("an integer, not a float");
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .expect("a native preStop sleep");
    assert!(pause > 0);
    let termination = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        termination > grace + pause,
        "{termination} <= {grace} + {pause}"
    );
    assert!(annotation(&deployment["spec"]["template"], "checksum/config").len() == 64);
    // The Services: the ClusterIP one, and a headless one for per-call balancing.
    let service = named(manifests, "Service", "tollgate");
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["name"], "grpc");
    assert_eq!(port["appProtocol"], "grpc");
    assert_eq!(port["port"], 50051);
    let headless = named(manifests, "Service", "tollgate-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for s in [service, headless] {
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[k], v, "{k}");
        }
    }
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    // helm test: the health check through the Service.
    let test = find(manifests, "Pod", "test");
    assert_eq!(annotation(test, "helm.sh/hook"), "test");
    assert_restricted(&test["spec"]);
    assert_eq!(
        test["spec"]["containers"][0]["command"],
        json!(["tollgate", "health", "--addr", "tollgate:50051"])
    );
    assert_eq!(
        named(manifests, "ServiceAccount", "tollgate")["automountServiceAccountToken"],
        false
    );
}
