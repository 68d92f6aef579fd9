"""Graph IR: the op table, building the networkx graph from syntax, and its checks and passes."""
