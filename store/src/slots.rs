//! The cap on uploads each identity may have in progress at once (`max_uploads_per_identity`),
//! so one machine or user cannot hold an unbounded number of connections, temp files and
//! reservations. The maintenance identity is exempt: prune must always be able to run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::access::Identity;
use crate::error::StoreError;

pub struct UploadSlots {
    max: usize,
    held: Mutex<HashMap<Identity, usize>>,
}

/// One upload in progress; its slot is freed when this is dropped.
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
    /// `None` for the exempt maintenance identity.
    identity: Option<Identity>,
}

impl UploadSlots {
    pub fn new(max: usize) -> Arc<UploadSlots> {
        Arc::new(UploadSlots { max, held: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more upload by `identity`, or 503 when it already has `max` in progress.
    pub fn acquire(self: &Arc<Self>, identity: &Identity) -> Result<UploadSlot, StoreError> {
        let slots = Arc::clone(self);
        if *identity == Identity::Maintenance {
            return Ok(UploadSlot { slots, identity: None });
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(identity.clone()).or_default();
        if *n >= self.max {
            return Err(StoreError::TooManyUploads);
        }
        *n += 1;
        Ok(UploadSlot { slots, identity: Some(identity.clone()) })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let Some(identity) = &self.identity else { return };
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_has_its_own_slots_and_maintenance_none() {
        let slots = UploadSlots::new(2);
        let (a, b) = (Identity::User("a".into()), Identity::Machine(uuid::Uuid::new_v4()));
        let a1 = slots.acquire(&a).unwrap();
        let _a2 = slots.acquire(&a).unwrap();
        assert_eq!(slots.acquire(&a).err().map(|e| e.status().as_u16()), Some(503));
        let _b1 = slots.acquire(&b).unwrap();
        let maintenance: Vec<_> = (0..10).map(|_| slots.acquire(&Identity::Maintenance).unwrap()).collect();
        drop(a1);
        let _a3 = slots.acquire(&a).unwrap();
        drop(maintenance);
        assert_eq!(slots.held.lock().unwrap().values().sum::<usize>(), 3);
    }
}
