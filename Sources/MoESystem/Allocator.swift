import CMoEShims

/// How freed memory goes back to the system.
public enum Allocator {
    /// Fixes glibc's mmap threshold at 128 KiB, so every large block (a resident tensor's copy, a model's scratch)
    /// is its own mapping and goes back to the system when freed. By default glibc raises the threshold after
    /// each large free (up to 32 MiB) and serves later blocks of that size from its heap, which it rarely trims:
    /// loading and dropping a K2 slice's model grew RSS by 16% over 40 cycles with the default, 5.6% over 20 with
    /// the threshold fixed at 4 MiB, and 0.4% over 40 at 128 KiB (`moestream bench lifecycle`). The price: a
    /// forward pass's logits array (655 KB at K2's vocabulary) is mapped and unmapped each token, tens of
    /// microseconds against a token's hundreds of milliseconds. Call once at start-up, before large allocations.
    public static func returnLargeBlocksWhenFreed() {
        _ = cmoe_malloc_fix_mmap_threshold(128 * 1024)
    }
}
