//! The benches allocate with mimalloc, as the shipped code does (the Ruby
//! binding and `pe_failover_receive` set it as their global allocator), so
//! what they time is what runs on a primary.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
