import MoECheckpoint
import MoESystem

/// What can be wrong with an expert store or a conversion. Cases name the file, and the layer, expert or
/// tensor, so a user knows what is damaged.
public enum StoreError: Error, CustomStringConvertible {
    case system(SystemError)
    case checkpoint(CheckpointError)
    /// No manifest.json: the store was never finished (a conversion stopped half way) or is not a store.
    case incomplete(store: String)
    /// manifest.json cannot be read, has the wrong format or version, or its self-checksum does not match.
    case badManifest(file: String, reason: String)
    /// A GGUF's sums file (`GGUFSums`) that cannot be read or does not describe the GGUF beside it.
    case badSums(file: String, reason: String)
    /// A data file's size is not what the manifest says.
    case wrongFileSize(file: String, expected: Int, actual: Int, firstMissingExpert: Int?)
    /// An expert's bytes do not match their checksum.
    case expertChecksum(layer: Int, expert: Int, file: String, offset: Int)
    /// A resident tensor's bytes do not match their checksum.
    case tensorChecksum(tensor: String, file: String)
    /// A copied file (config, tokenizer) does not match its checksum.
    case fileChecksum(file: String)
    /// The source cannot be converted as asked.
    case unsupportedSource(file: String, reason: String)
    /// A source matrix the conversion quantises holds a NaN or an infinity (a damaged checkpoint): no scale can
    /// represent it, and quantising it anyway would store wrong weights.
    case nonFiniteWeight(tensor: String, row: Int, column: Int, value: Float)
    /// The output directory holds something else than an interrupted conversion of the same source and options.
    case outputInUse(path: String, reason: String)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .checkpoint(let e): return e.description
        case .incomplete(let s): return "\(s): not a complete store (no manifest.json; re-run the conversion to finish it)"
        case .badManifest(let f, let r): return "\(f): bad manifest: \(r)"
        case .badSums(let f, let r): return "\(f): bad GGUF sums file: \(r)"
        case .wrongFileSize(let f, let e, let a, let m):
            return "\(f): \(a) bytes, expected \(e)" + (m.map { " (expert \($0) onwards is missing)" } ?? "")
        case .expertChecksum(let l, let e, let f, let o):
            return "layer \(l) expert \(e): checksum mismatch in \(f) at offset \(o)"
        case .tensorChecksum(let t, let f): return "\(f): tensor '\(t)': checksum mismatch"
        case .fileChecksum(let f): return "\(f): checksum mismatch"
        case .unsupportedSource(let f, let r): return "\(f): \(r)"
        case .outputInUse(let p, let r): return "\(p): \(r)"
        case .nonFiniteWeight(let t, let r, let c, let v):
            return "tensor '\(t)': row \(r), column \(c) holds \(v), not a finite number (a damaged checkpoint?): it cannot be quantised"
        }
    }
}
