#pragma once
// dist/: data-parallel training. The communicator concept and dist::Single, batch sharding,
// the parameter hash, sharded evaluation. dist::Mpi (sora/dist/mpi.hpp, target sora::mpi) and
// dist::Nccl (sora/dist/nccl.hpp, target sora::nccl) need MPI / NCCL: include them yourself.
#include "sora/dist/communicator.hpp"
#include "sora/dist/gather_outputs.hpp"
#include "sora/dist/param_hash.hpp"
#include "sora/dist/shard.hpp"
