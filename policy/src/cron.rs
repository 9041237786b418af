//! Cron expressions (five fields, Vixie cron's rules), evaluated on civil (local) time.
