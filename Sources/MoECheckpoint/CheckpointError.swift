import MoESystem

/// Everything that can be wrong with a checkpoint on disk. Every case names the file, and the tensor or key
/// where there is one, so a user can find the damage.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    /// A system call failed (the file is missing, unreadable, ...).
    case system(SystemError)
    /// The safetensors header cannot be read: too short, bad length, not JSON, wrong structure.
    case malformedHeader(file: String, reason: String)
    /// One tensor's header entry is wrong: unknown dtype, bad shape, offsets outside the data or overlapping.
    case badTensor(file: String, tensor: String, reason: String)
    /// The file is shorter than its header says.
    case truncated(file: String, tensor: String, needed: Int, actual: Int)
    /// A tensor the model needs is in no file.
    case missingTensor(tensor: String, searched: String)
    /// A tensor exists but has the wrong shape or dtype for this configuration.
    case wrongShape(file: String, tensor: String, expected: [Int], actual: [Int])
    case wrongDType(file: String, tensor: String, expected: String, actual: String)
    /// The shard index (`model.safetensors.index.json`) is broken or names a shard that does not hold the tensor.
    case badIndex(file: String, reason: String)
    /// config.json is not valid JSON, lacks a key, or holds a value the engine does not support.
    case badConfig(file: String, key: String, reason: String)
    /// A GGUF file's structure is wrong: bad magic or version, a count or length that runs past the file, a tensor
    /// whose bytes lie outside the data or overlap another's.
    case malformedGGUF(file: String, reason: String)
    /// Tensors of GGML types this build cannot decode yet, by type, each with the tensors that use it.
    case unsupportedTypes(file: String, types: [String: [String]])

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .malformedHeader(let file, let reason): return "\(file): malformed safetensors header: \(reason)"
        case .badTensor(let file, let tensor, let reason): return "\(file): tensor '\(tensor)': \(reason)"
        case .truncated(let file, let tensor, let needed, let actual):
            return "\(file): truncated: tensor '\(tensor)' needs bytes up to \(needed) but the file has \(actual)"
        case .missingTensor(let tensor, let searched): return "tensor '\(tensor)' not found in \(searched)"
        case .wrongShape(let file, let tensor, let expected, let actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), expected \(expected)"
        case .wrongDType(let file, let tensor, let expected, let actual):
            return "\(file): tensor '\(tensor)' has dtype \(actual), expected \(expected)"
        case .badIndex(let file, let reason): return "\(file): bad shard index: \(reason)"
        case .badConfig(let file, let key, let reason): return "\(file): config key '\(key)': \(reason)"
        case .malformedGGUF(let file, let reason): return "\(file): malformed GGUF: \(reason)"
        case .unsupportedTypes(let file, let types):
            let list = types.keys.sorted().map { type in
                let tensors = types[type]!
                let shown = tensors.prefix(4).joined(separator: ", ") + (tensors.count > 4 ? ", … (\(tensors.count) tensors)" : "")
                return "\(type) (\(shown))"
            }
            return "\(file): GGML types this build cannot run yet: \(list.joined(separator: "; "))"
        }
    }
}
