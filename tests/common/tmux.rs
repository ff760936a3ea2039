//! A tmux server of its own per test, to drive the cockpit in a terminal as a person does.

use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of its own (killed on drop) running one window.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("cutover-test-{}", uuid::Uuid::new_v4().simple()),
        };
        let status = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "c", "-x", "160", "-y", "48"])
            .arg(command)
            .status()
            .expect("tmux");
        assert!(status.success(), "tmux starts");
        tmux
    }
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&self.socket);
        cmd
    }
    pub fn send(&self, keys: &[&str]) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "c"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
    pub fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "c"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "c"])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
    pub fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} never appeared; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// A deliberate keypress after the dialog's guard.
    pub fn confirm(&self, keys: &[&str]) {
        std::thread::sleep(Duration::from_millis(500));
        self.send(keys);
    }
    pub fn wait_exit(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "the cockpit did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// Type the point of no return's word, move to the buttons, and press Shift+Y after the
    /// dialog's guard until `done` shows (a dialog whose readings changed asks again).
    pub fn confirm_typed(&self, word: &str, done: &str, timeout: Duration) -> String {
        std::thread::sleep(Duration::from_millis(500));
        self.send(&["-l", word]);
        self.send(&["Tab"]);
        let deadline = Instant::now() + timeout;
        std::thread::sleep(Duration::from_millis(500));
        self.send(&["-l", "Y"]);
        loop {
            let screen = self.screen();
            if screen.contains(done) {
                return screen;
            }
            if screen.contains("confirm again") {
                std::thread::sleep(Duration::from_millis(500));
                self.send(&["-l", "Y"]);
            }
            assert!(
                Instant::now() < deadline,
                "{done:?} never appeared; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}
