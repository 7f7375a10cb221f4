// swift-tools-version: 6.0
// MoEStream: Kimi K2 on one workstation, routed experts streamed from NVMe.
import PackageDescription

/// Release builds optimise with Swift's checks kept (bounds, overflow, preconditions): the libraries read files
/// and requests from outside, and a check that traps is better than a crafted download reading out of bounds.
let optimized: [SwiftSetting] = [.unsafeFlags(["-O", "-wmo"], .when(configuration: .release))]

/// Only the innermost kernels (MoETensor: element loops over already-validated buffers) drop the checks. They
/// are optimised in debug builds too: unoptimised SIMD code is ~50× slower, which made the tests that run real
/// models (perplexity of the demo model) take minutes.
let kernels: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
                               .unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "MoEStream",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "moestream", targets: ["moestream"]),
        .executable(name: "moestream-fuzz", targets: ["moestream-fuzz"]),
        .library(name: "MoEModel", targets: ["MoEModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
    ],
    targets: [
        // C shim over liburing and libnuma: the macros and inline functions Swift cannot import.
        .target(
            name: "CMoEShims",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("numa")]
        ),
        // The innermost matrix kernels, one per instruction set (AVX2, AVX-512), chosen at run time by MoETensor.
        .target(
            name: "CMoEKernels",
            cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]
        ),
        // Syscalls, mapped files, errno errors. Knows nothing of models.
        .target(name: "MoESystem", dependencies: ["CMoEShims"], swiftSettings: optimized),
        // Element types, tensor views and the kernels that read them.
        .target(name: "MoETensor", dependencies: ["CMoEKernels"], swiftSettings: kernels),
        // Read-only parsers of what a checkpoint directory holds: safetensors, sharded index, config.json.
        .target(name: "MoECheckpoint", dependencies: ["MoESystem", "MoETensor"], swiftSettings: optimized),
        // The Kimi K2 / DeepSeek-V3 forward pass. Asks an ExpertProviding for routed experts; never does I/O.
        .target(name: "MoEModel", dependencies: ["MoETensor", "MoECheckpoint"], swiftSettings: optimized),
        // Our on-disk layout: manifest, resident safetensors, one aligned extent per routed expert; converter,
        // verifier and the synchronous expert reader.
        .target(name: "MoEExpertStore", dependencies: ["MoESystem", "MoETensor", "MoECheckpoint", "MoEModel", "MoETokenizer"],
                swiftSettings: optimized),
        // Kimi's tiktoken BPE with its pre-tokenizer, special tokens, chat formats.
        .target(name: "MoETokenizer", dependencies: ["MoESystem"], swiftSettings: optimized),
        // Samplers and the generation loop (and the engine that serialises requests for the CLI and the server).
        .target(name: "MoEGeneration", dependencies: ["MoETensor", "MoEModel", "MoETokenizer"], swiftSettings: optimized),
        // OpenAI-compatible HTTP API (Hummingbird 2): chat and completions, SSE, models, health, Prometheus metrics.
        .target(name: "MoEServer", dependencies: ["MoEGeneration", "MoETokenizer", "MoERuntime",
                                                  .product(name: "Hummingbird", package: "hummingbird")]),
        // The expert cache (slots per NUMA node), I/O threads (io_uring or pread), policies, prefetcher, statistics.
        .target(name: "MoERuntime", dependencies: ["MoESystem", "MoETensor", "MoECheckpoint", "MoEModel", "MoEExpertStore"],
                swiftSettings: optimized),
        .executableTarget(
            name: "moestream",
            dependencies: [
                "MoEModel", "MoECheckpoint", "MoESystem", "MoEExpertStore", "MoERuntime", "MoETokenizer", "MoEGeneration", "MoEServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: optimized
        ),
        // The mutation fuzzer over every file kind the engine reads (driven by Tools/fuzz).
        .executableTarget(
            name: "moestream-fuzz",
            dependencies: ["MoECheckpoint", "MoETensor", "MoEModel", "MoEExpertStore", "MoERuntime", "MoETokenizer"],
            swiftSettings: optimized
        ),
        // Shared by the test targets: fixture paths, reference outputs, a safetensors writer for planting damage.
        .target(name: "MoETestSupport", dependencies: ["MoETensor"], path: "Tests/MoETestSupport"),
        .testTarget(name: "MoESystemTests", dependencies: ["MoESystem"]),
        .testTarget(name: "MoETensorTests", dependencies: ["MoETensor"]),
        .testTarget(name: "MoECheckpointTests", dependencies: ["MoECheckpoint", "MoETestSupport"]),
        .testTarget(name: "MoEModelTests", dependencies: ["MoEModel", "MoECheckpoint", "MoETestSupport"]),
        .testTarget(name: "MoETokenizerTests", dependencies: ["MoETokenizer", "MoETestSupport"]),
        .testTarget(name: "MoEGenerationTests", dependencies: ["MoEGeneration", "MoEModel", "MoETensor", "MoETokenizer", "MoETestSupport"]),
        .testTarget(name: "MoERuntimeTests",
                    dependencies: ["MoERuntime", "MoEExpertStore", "MoEModel", "MoESystem", "MoETestSupport"]),
        // The command line as a user runs it (a separate process).
        .testTarget(name: "moestreamTests", dependencies: ["moestream", "MoETokenizer", "MoECheckpoint", "MoEModel", "MoETensor", "MoEExpertStore", "MoETestSupport"]),
        .testTarget(name: "MoEExpertStoreTests",
                    // moestream: the converter is killed mid-run as a separate process.
                    dependencies: ["MoEExpertStore", "MoEModel", "MoECheckpoint", "MoESystem", "MoETestSupport", "moestream"]),
    ],
    swiftLanguageModes: [.v6]
)
