//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};

/// A latch the test opens to release tasks that block on it (no sleeps as synchronisation).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    pub fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }
}
