import Foundation
import MoESystem
import MoETensor

/// One `.safetensors` file, memory-mapped, its header fully validated at open.
///
/// Layout: 8 bytes little-endian header length N, N bytes of JSON
/// `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the data; offsets are
/// relative to the start of the data. We check that every entry's dtype is known, its shape × dtype size equals
/// its byte length, its bytes lie inside the file, and no two tensors overlap, so a tensor view can never read
/// outside the mapping.
public final class SafetensorsFile: @unchecked Sendable {  // immutable after init: `let` fields over a read-only `MappedFile`
    public struct Entry: Sendable, Equatable {
        public let dtype: DType
        public let shape: [Int]
        /// Byte range inside the file (already offset by the header).
        public let range: Range<Int>
    }

    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    let file: MappedFile

    /// Largest header we accept: real headers are a few hundred KB; a huge length means a damaged file.
    static let maxHeaderBytes = 100 << 20

    /// Tensors whose bytes were left out of a copy (`init(path:copy:skipping:)`): `tensor` refuses them.
    public let skipped: Set<String>

    /// Opens `path`, mapped, or with `copy` read into memory the process owns (see `MappedFile`). With `copy`,
    /// the tensors named in `skipping` are not read: the pages wholly inside their bytes are never touched (no
    /// memory) and made inaccessible, and `tensor` refuses them by name. A store's resident file under the int8
    /// companion (`ExpertStore`) skips the bf16 matrices the companion replaces. The header is parsed from the
    /// mapping first (to find the ranges) and again from the copy, and the two must agree.
    public init(path: String, copy: Bool = false, skipping: Set<String> = []) throws(CheckpointError) {
        self.path = path
        if copy, !skipping.isEmpty {
            let mapped: MappedFile
            do { mapped = try MappedFile(path: path) } catch { throw .system(error) }
            let first = try Self.parseHeader(mapped, name: path)
            let holes = skipping.compactMap { first.entries[$0]?.range }
            do { file = try MappedFile(path: path, copy: true, skipping: holes) } catch { throw .system(error) }
            (entries, metadata) = try Self.parseHeader(file, name: path)
            guard entries == first.entries else {
                throw .malformedHeader(file: path, reason: "the header changed while the file was read")
            }
        } else {
            do { file = try MappedFile(path: path, copy: copy) } catch { throw .system(error) }
            (entries, metadata) = try Self.parseHeader(file, name: path)
        }
        skipped = copy ? skipping.intersection(entries.keys) : []
    }

    /// Validates the header of `file` and returns its entries and metadata.
    private static func parseHeader(_ file: MappedFile, name: String) throws(CheckpointError)
        -> (entries: [String: Entry], metadata: [String: String]) {
        guard file.count >= 8 else {
            throw .malformedHeader(file: name, reason: "file is \(file.count) bytes, shorter than the 8-byte length")
        }
        let lengthBytes = file.bytes(0..<8)
        let rawLength = UInt64(littleEndian: lengthBytes.loadUnaligned(as: UInt64.self))
        guard rawLength > 0, rawLength <= UInt64(Self.maxHeaderBytes) else {
            throw .malformedHeader(file: name, reason: "header length \(rawLength) is out of range (1...\(Self.maxHeaderBytes))")
        }
        let headerLength = Int(rawLength)
        guard 8 + headerLength <= file.count else {
            throw .malformedHeader(
                file: name, reason: "header length \(headerLength) runs past the end of the file (\(file.count) bytes)")
        }
        let headerData = Data(file.bytes(8..<(8 + headerLength)))
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerData) } catch {
            throw .malformedHeader(file: name, reason: "header is not valid JSON")
        }
        guard let dict = json as? [String: Any] else {
            throw .malformedHeader(file: name, reason: "header is not a JSON object")
        }
        let dataStart = 8 + headerLength
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (tensor, value) in dict {
            if tensor == "__metadata__" {
                if let m = value as? [String: Any] { for (k, v) in m { metadata[k] = "\(v)" } }
                continue
            }
            entries[tensor] = try Self.parseEntry(tensor, value, file: name, dataStart: dataStart, fileSize: file.count)
        }
        try Self.checkOverlaps(entries, file: name)
        return (entries, metadata)
    }

    private static func parseEntry(_ tensor: String, _ value: Any, file: String, dataStart: Int,
                                   fileSize: Int) throws(CheckpointError) -> Entry {
        guard let e = value as? [String: Any] else { throw .badTensor(file: file, tensor: tensor, reason: "entry is not an object") }
        guard let dtypeName = e["dtype"] as? String else { throw .badTensor(file: file, tensor: tensor, reason: "no dtype") }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw .badTensor(file: file, tensor: tensor, reason: "unsupported dtype \(dtypeName)")
        }
        guard let shapeAny = e["shape"] as? [Any], shapeAny.count <= 8, let shape = Self.ints(shapeAny), shape.allSatisfy({ $0 >= 0 }) else {
            throw .badTensor(file: file, tensor: tensor, reason: "shape is not a list of at most 8 non-negative integers")
        }
        guard let offAny = e["data_offsets"] as? [Any], let offsets = Self.ints(offAny), offsets.count == 2 else {
            throw .badTensor(file: file, tensor: tensor, reason: "data_offsets is not [begin, end]")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin >= 0, end >= begin else {
            throw .badTensor(file: file, tensor: tensor, reason: "data_offsets [\(begin), \(end)] are out of order")
        }
        let (elements, overflow) = shape.reduce((1, false)) { acc, d in
            let (p, o) = acc.0.multipliedReportingOverflow(by: d)
            return (p, acc.1 || o)
        }
        guard !overflow, elements.multipliedReportingOverflow(by: dtype.byteSize).overflow == false,
              elements * dtype.byteSize == end - begin else {
            throw .badTensor(file: file, tensor: tensor,
                             reason: "shape \(shape) × \(dtype.rawValue) is not the \(end - begin) bytes of data_offsets")
        }
        // `end` comes from the file: compare it with the room left, never add it to anything first.
        guard end <= fileSize - dataStart else {
            let (needed, overflow) = dataStart.addingReportingOverflow(end)
            throw .truncated(file: file, tensor: tensor, needed: overflow ? Int.max : needed, actual: fileSize)
        }
        return Entry(dtype: dtype, shape: shape, range: (dataStart + begin)..<(dataStart + end))
    }

    private static func ints(_ values: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in values {
            guard let n = v as? NSNumber, n.doubleValue == Double(n.int64Value) else { return nil }
            out.append(n.intValue)
        }
        return out
    }

    private static func checkOverlaps(_ entries: [String: Entry], file: String) throws(CheckpointError) {
        let sorted = entries.filter { !$0.value.range.isEmpty }.sorted { $0.value.range.lowerBound < $1.value.range.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.value.range.lowerBound < a.value.range.upperBound {
            throw .badTensor(file: file, tensor: b.key, reason: "its bytes overlap tensor '\(a.key)'")
        }
    }

    /// Drops `name`'s pages (or those of `bytes` within it) from this process (see `MappedFile.release`): for
    /// streaming over huge checkpoints.
    public func release(_ name: String, bytes: Range<Int>? = nil) {
        guard let e = entries[name] else { return }
        guard let bytes else { return file.release(e.range) }
        file.release((e.range.lowerBound + bytes.lowerBound)..<min(e.range.upperBound, e.range.lowerBound + bytes.upperBound))
    }

    /// A zero-copy view of `name`. When the tensor's bytes are not aligned to its element size (safetensors does
    /// not promise it), the bytes are copied once into an aligned buffer so kernels may load elements directly.
    public func tensor(_ name: String) throws(CheckpointError) -> Tensor {
        guard let e = entries[name] else { throw .missingTensor(tensor: name, searched: path) }
        guard !skipped.contains(name) else {
            throw .missingTensor(tensor: name, searched: path + " (its bytes were not read: the int8 companion replaces it)")
        }
        let bytes = file.bytes(e.range)
        guard let base = bytes.baseAddress else {
            let empty = AlignedBuffer(byteCount: 0)
            return Tensor(name: name, dtype: e.dtype, shape: e.shape, data: UnsafeRawPointer(empty.pointer), byteCount: 0, owner: empty)
        }
        if Int(bitPattern: base) % e.dtype.byteSize != 0 {
            let copy = AlignedBuffer(byteCount: bytes.count)
            copy.pointer.copyMemory(from: base, byteCount: bytes.count)
            return Tensor(name: name, dtype: e.dtype, shape: e.shape, data: UnsafeRawPointer(copy.pointer),
                          byteCount: bytes.count, owner: copy)
        }
        return Tensor(name: name, dtype: e.dtype, shape: e.shape, data: base, byteCount: bytes.count, owner: file)
    }
}
