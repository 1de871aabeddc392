#pragma once
// prox/: proximal operators and their regularizers' values, over Eigen dense expressions.
//   elementwise.hpp   soft / hard / L1 / L0 / elastic net / nonneg soft / firm (MCP) / box
//   topk.hpp          projection onto the L0 ball (k largest magnitudes)
//   groups.hpp        group descriptors: rows, cols, blocks, validated partitions
//   group.hpp         group soft (group lasso) / hard / L0 over those groups
//   triplet.hpp       the same over rank triplets (row i of A, column i of B, g_i)
//   regularizers.hpp  l1, l0, elastic_net, mcp, group_l21, group_l0, indicators, ...
#include "sora/prox/elementwise.hpp"
#include "sora/prox/group.hpp"
#include "sora/prox/groups.hpp"
#include "sora/prox/regularizers.hpp"
#include "sora/prox/topk.hpp"
#include "sora/prox/triplet.hpp"
