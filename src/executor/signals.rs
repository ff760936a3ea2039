//! Signals to the driving process: SIGTERM, SIGHUP (the operator's terminal went away) and
//! SIGINT become a [`StopHandle`] request, so the runner ends a write pause before the
//! process exits instead of leaving applications waiting.

use super::StopHandle;
use tokio::signal::unix::{signal, SignalKind};

/// Turn the three stop signals into `stop` requests for the rest of the process's life.
pub fn stop_on_signals(stop: StopHandle) {
    let kinds = [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::interrupt(), "SIGINT"),
    ];
    for (kind, name) in kinds {
        let stop = stop.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        eprintln!("cutover: {name}: stopping; a write pause is ended before exit (SIGKILL abandons it)");
                        stop.stop(format!("{name} received"));
                    }
                });
            }
            Err(e) => eprintln!("cutover: cannot handle {name}: {e}"),
        }
    }
}
