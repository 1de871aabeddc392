#pragma once
// prox/: proximal operators and their regularizers' values, over Eigen dense expressions.
