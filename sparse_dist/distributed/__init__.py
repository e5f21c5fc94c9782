"""How to shard and talk across ranks: process setup, the DeepSpeed config, views of ZeRO partitions."""
