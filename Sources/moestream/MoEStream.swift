import ArgumentParser

@main
struct MoEStream: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moestream",
        abstract: "Run Kimi K2 on one workstation, streaming routed experts from NVMe.",
        subcommands: [Run.self, Chat.self, Serve.self, Tokenize.self, Convert.self, Verify.self, Inspect.self, Logits.self, Generate.self,
                      Perplexity.self, Stats.self, Plan.self, Bench.self])
}

/// Parses `1,17,42` (commas or spaces) into token ids.
struct TokenList: ExpressibleByArgument {
    let ids: [Int]

    init?(argument: String) {
        let parts = argument.split(whereSeparator: { $0 == "," || $0 == " " })
        var ids: [Int] = []
        for p in parts {
            guard let v = Int(p) else { return nil }
            ids.append(v)
        }
        guard !ids.isEmpty else { return nil }
        self.ids = ids
    }
}

/// Formats a byte count for people: 1.5 GB, 24.8 MB.
func humanBytes(_ n: Int) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var v = Double(n)
    var u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
}
