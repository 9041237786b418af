//! Which snapshots a retention policy keeps: restic's `forget` rules, exactly.
