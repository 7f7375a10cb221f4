import Foundation
import MoECheckpoint
import MoEModel
import MoESystem
import MoETensor

/// Where each routed expert's bytes lie on disk and how a cache slot holds them: what the expert cache reads,
/// whatever the source.
///
/// An expert is one or more *parts*, each a run of `stride` bytes at `base + expert × stride` in a file. A store's
/// expert is one part, its whole extent (already aligned). A GGUF's is three — its gate, up and down rows in the
/// stacked `ffn_*_exps` tensors — at offsets no one aligned, so each is read as its aligned superset (O_DIRECT
/// reads whole blocks): from the block that holds its first byte to the end of the block that holds its last
/// (a part that ends the file comes back short, up to the file's end), into its own space of the slot; the matrix
/// starts `lead` bytes in.
public struct ExpertReads: @unchecked Sendable {  // immutable; `weights` builds views over a slot the caller owns
    public struct Part: Sendable, Equatable {
        /// Index into `paths`.
        public var file: Int
        public var base: Int
        public var stride: Int
        /// Where this part's superset starts in a slot.
        public var slotOffset: Int
    }

    /// One read of a part of an expert: `length` bytes asked for (whole blocks, as O_DIRECT wants), of which
    /// `expected` come back (fewer only where the file ends first).
    public struct Segment: Sendable, Equatable {
        public var file: Int
        public var offset: Int
        public var length: Int
        public var expected: Int
        public var slotOffset: Int
        /// Bytes of the superset before the part's first byte.
        public var lead: Int
    }

    /// The files the reads address.
    public let paths: [String]
    public let fileSizes: [Int]
    /// Bytes of one slot (a multiple of `alignment`).
    public let slotBytes: Int
    public let alignment: Int
    /// Per MoE layer (in order): the parts of each of its experts.
    public let parts: [[Part]]
    /// Per MoE layer and expert: xxHash64 of its parts' bytes in order, as one stream (a store's: its whole
    /// extent; a GGUF's with a sums file: its gate, up and down rows, `GGUFSums`), or nil for a source without
    /// checksums.
    public let checksums: [[UInt64]]?
    /// The expert's matrices over a slot holding it: (slot, layer, expert, owner of the slot memory).
    public let weights: @Sendable (UnsafeRawPointer, Int, Int, AnyObject) -> ExpertWeights
    /// What the reads come from, for messages ("store /x" or the .gguf).
    public let label: String

    public init(paths: [String], fileSizes: [Int], slotBytes: Int, alignment: Int, parts: [[Part]], checksums: [[UInt64]]?,
                label: String, weights: @escaping @Sendable (UnsafeRawPointer, Int, Int, AnyObject) -> ExpertWeights) {
        self.paths = paths
        self.fileSizes = fileSizes
        self.slotBytes = slotBytes
        self.alignment = alignment
        self.parts = parts
        self.checksums = checksums
        self.label = label
        self.weights = weights
    }

    /// The most reads one expert takes.
    public var maxSegments: Int { parts.map(\.count).max() ?? 1 }

    /// Segment `i` of expert `e` of MoE layer `ordinal`.
    @inline(__always)
    public func segment(ordinal k: Int, expert e: Int, _ i: Int) -> Segment {
        let p = parts[k][i]
        let start = p.base + e * p.stride
        let first = start / alignment * alignment
        let end = (start + p.stride + alignment - 1) / alignment * alignment
        return Segment(file: p.file, offset: first, length: end - first, expected: min(end, fileSizes[p.file]) - first,
                       slotOffset: p.slotOffset, lead: start - first)
    }
}

extension ExpertStore {
    /// A store's experts: one aligned extent each, checksummed, in the store's layout (and each layer's GGML types).
    public var expertReads: ExpertReads {
        let layout = manifest.experts.layout
        let files = manifest.experts.files
        let types = files.map { $0.ggmlTypes(layout) }
        let extent = layout.extentBytes
        return ExpertReads(
            paths: files.map { path + "/" + $0.path }, fileSizes: files.map { $0.experts * extent }, slotBytes: extent,
            alignment: layout.alignment, parts: files.indices.map { [ExpertReads.Part(file: $0, base: 0, stride: extent, slotOffset: 0)] },
            checksums: files.map { $0.checksums.map { UInt64($0, radix: 16) ?? 0 } }, label: "store \(path)",
            weights: { [moeOrdinal = Dictionary(uniqueKeysWithValues: files.enumerated().map { ($1.layer, $0) })] slot, layer, _, owner in
                let m = layout.weights(at: slot, owner: owner, types: types[moeOrdinal[layer]!])
                return ExpertWeights(gate: m.gate, up: m.up, down: m.down)
            })
    }
}

/// A GGUF's experts read straight from the file (direct mode): each expert's gate, up and down rows of the stacked
/// `ffn_*_exps` tensors, as aligned supersets, into a slot with a space for each sized for its largest superset
/// across the layers. The file has no checksums; `checksums` are a sums file's (`GGUFSums.Checked.experts`).
public enum GGUFExpertReads {
    public static func make(_ gguf: GGUFCheckpoint, _ c: ModelConfig, alignment: Int = 4096,
                            checksums: [[UInt64]]? = nil) throws(StoreError) -> ExpertReads {
        let types = try StoreConverter.expertTypes(gguf, c)
        let paths = gguf.files.map(\.path)
        // Following symbolic links: a Hugging Face cache's snapshot holds links to its blobs.
        var sizes: [Int] = []
        for p in paths { sizes.append((try? FileSystem.regularFileSize(p)) ?? 0) }
        // Each matrix's space: the largest superset of its rows in any layer (a part of `stride` bytes starting
        // anywhere spans at most ⌈(stride + alignment − 1) / alignment⌉ blocks).
        var spaces = [0, 0, 0]
        var tensors: [[(file: Int, base: Int, stride: Int)]] = []
        for l in c.moeLayers {
            var row: [(Int, Int, Int)] = []
            for (i, proj) in ["gate", "up", "down"].enumerated() {
                let (file, info) = gguf.info("blk.\(l).ffn_\(proj)_exps.weight")!
                let stride = info.range.count / c.numRoutedExperts
                spaces[i] = max(spaces[i], (stride + 2 * alignment - 1) / alignment * alignment)
                row.append((gguf.files.firstIndex { $0 === file }!, info.range.lowerBound, stride))
            }
            tensors.append(row)
        }
        let offsets = [0, spaces[0], spaces[0] + spaces[1]]
        let parts = tensors.map { row in row.enumerated().map { i, t in ExpertReads.Part(file: t.file, base: t.base, stride: t.stride, slotOffset: offsets[i]) } }
        let shapes = [(c.moeIntermediateSize, c.hiddenSize), (c.moeIntermediateSize, c.hiddenSize), (c.hiddenSize, c.moeIntermediateSize)]
        let layerTypes = c.moeLayers.map { types[$0]! }
        var ordinal = [Int](repeating: -1, count: c.numLayers)
        for (k, l) in c.moeLayers.enumerated() { ordinal[l] = k }
        let reads = ExpertReads(
            paths: paths, fileSizes: sizes, slotBytes: spaces.reduce(0, +), alignment: alignment, parts: parts, checksums: checksums,
            label: gguf.path,
            weights: { [ordinal] slot, layer, e, owner in
                let k = ordinal[layer]
                var m: [WeightMatrix] = []
                for i in 0..<3 {
                    let p = parts[k][i]
                    let lead = (p.base + e * p.stride) % alignment
                    let type = layerTypes[k][i]
                    let encoding: WeightMatrix.Encoding = type == .f32 ? .f32 : type == .f16 ? .f16 : type == .bf16 ? .bf16 : .ggml(type)
                    m.append(WeightMatrix(rows: shapes[i].0, cols: shapes[i].1, data: slot + p.slotOffset + lead, encoding: encoding,
                                          owners: [owner]))
                }
                return ExpertWeights(gate: m[0], up: m[1], down: m[2])
            })
        return reads
    }
}
