//! State shared between the lab's threads.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a thread panicked holding it: what it recorded up
/// to then is still worth reading.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
