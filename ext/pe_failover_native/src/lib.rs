//! Ruby binding of pe_failover_core.
