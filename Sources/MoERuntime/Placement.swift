import MoESystem

/// Decides which NUMA node caches each expert, and so which node's slots, ring and (later) compute threads
/// serve it. Interleaving by expert id spreads a token's 8 experts over the nodes, so every node's drive
/// queue and memory bandwidth share the work of every token.
public struct Placement: Sendable {
    public let nodes: [Int]

    public init(topology: NumaTopology) { nodes = topology.nodes.map(\.id) }

    /// Index (into the topology's nodes) of the node that caches expert `e` of any layer.
    @inline(__always) public func nodeIndex(layer: Int, expert e: Int) -> Int {
        nodes.count == 1 ? 0 : (e &+ layer) % nodes.count
    }
}
