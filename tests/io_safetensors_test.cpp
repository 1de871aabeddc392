// io/: dtype conversions, the safetensors writer and reader, atomic writes, memory maps and
// loading tensors by name.
#include <doctest/doctest.h>

#include <unistd.h>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <sora/core/rng.hpp>
#include <sora/io/atomic_file.hpp>
#include <sora/io/dtype.hpp>
#include <sora/io/named_tensors.hpp>
#include <sora/io/safetensors.hpp>
#include <string>
#include <vector>

using namespace sora;
using namespace sora::io;
namespace fs = std::filesystem;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A fresh, empty directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "sora-io-test-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A file with the given header length field, header text and `data` zero bytes after it.
std::vector<std::byte> raw_file(std::uint64_t header_len, std::string_view header,
                                std::size_t data) {
  std::vector<std::byte> out(8 + header.size() + data, std::byte{0});
  std::memcpy(out.data(), &header_len, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}
std::vector<std::byte> raw_file(std::string_view header, std::size_t data) {
  return raw_file(header.size(), header, data);
}

std::string error_of(const std::vector<std::byte>& bytes) {
  try {
    SafetensorsFile::from_bytes(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST_CASE("F16 encoding rounds to nearest even, with subnormals, overflow, inf and NaN") {
  CHECK(double_to_f16(1.0) == 0x3C00);
  CHECK(double_to_f16(-2.0) == 0xC000);
  CHECK(double_to_f16(-0.0) == 0x8000);
  CHECK(double_to_f16(0.1) == 0x2E66);      // 0.0999755859375, the nearest half
  CHECK(double_to_f16(65504.0) == 0x7BFF);  // largest finite
  CHECK(double_to_f16(65519.0) == 0x7BFF);  // below the midpoint to 65536
  CHECK(double_to_f16(65520.0) == 0x7C00);  // midpoint, 0x7BFF is odd: rounds to inf
  CHECK(double_to_f16(1e10) == 0x7C00);
  // Ties between 1 and 1 + 2^-10: to the even mantissa.
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11)) == 0x3C00);
  CHECK(double_to_f16(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3C02);
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -30)) == 0x3C01);
  // Rounded once from double: via float, 1 + 2^-11 + 2^-40 would first become the tie
  // 1 + 2^-11 and then round down to 1.
  CHECK(double_to_f16(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)) == 0x3C01);
  // Subnormals: units of 2^-24.
  CHECK(double_to_f16(std::ldexp(1.0, -24)) == 0x0001);
  CHECK(double_to_f16(std::ldexp(1.0, -25)) == 0x0000);  // tie, 0 is even
  CHECK(double_to_f16(std::ldexp(1.0, -25) * 1.0001) == 0x0001);
  CHECK(double_to_f16(3 * std::ldexp(1.0, -25)) == 0x0002);  // tie between 1 and 2
  CHECK(double_to_f16(std::ldexp(1.0, -26)) == 0x0000);
  CHECK(double_to_f16(1023 * std::ldexp(1.0, -24)) == 0x03FF);    // largest subnormal
  CHECK(double_to_f16(1023.5 * std::ldexp(1.0, -24)) == 0x0400);  // tie into the normals
  CHECK(double_to_f16(std::ldexp(1.0, -14)) == 0x0400);           // smallest normal
  CHECK(double_to_f16(-std::ldexp(1.0, -24)) == 0x8001);
  CHECK(double_to_f16(std::numeric_limits<double>::denorm_min()) == 0x0000);
  CHECK(double_to_f16(kInf) == 0x7C00);
  CHECK(double_to_f16(-kInf) == 0xFC00);
  const std::uint16_t nan = double_to_f16(kNaN);
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x03FF) != 0);
  CHECK((double_to_f16(-kNaN) & 0x8000) != 0);
}

TEST_CASE("F16 decoding is exact") {
  CHECK(f16_to_double(0x3C00) == 1.0);
  CHECK(f16_to_double(0x0001) == std::ldexp(1.0, -24));
  CHECK(f16_to_double(0x03FF) == 1023 * std::ldexp(1.0, -24));
  CHECK(f16_to_double(0x7BFF) == 65504.0);
  CHECK(f16_to_double(0x3555) == 0.333251953125);
  CHECK(f16_to_double(0xC000) == -2.0);
  CHECK(std::signbit(f16_to_double(0x8000)));
  CHECK(f16_to_double(0x7C00) == kInf);
  CHECK(f16_to_double(0xFC00) == -kInf);
  CHECK(std::isnan(f16_to_double(0x7E00)));
  // Every finite half survives decode -> encode.
  int mismatches = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    if ((bits & 0x7C00) == 0x7C00) continue;
    mismatches += double_to_f16(f16_to_double(bits)) != bits;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("BF16 encoding rounds to nearest even, with subnormals, overflow, inf and NaN") {
  CHECK(double_to_bf16(1.0) == 0x3F80);
  CHECK(double_to_bf16(3.140625) == 0x4049);
  CHECK(double_to_bf16(3.14159265) == 0x4049);
  CHECK(double_to_bf16(-0.0) == 0x8000);
  CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8)) == 0x3F80);  // tie, even
  CHECK(double_to_bf16(1.0 + 3 * std::ldexp(1.0, -8)) == 0x3F82);
  CHECK(double_to_bf16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -20)) == 0x3F81);
  CHECK(double_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // rounds up to inf
  CHECK(double_to_bf16(3.3895313892515355e38) == 0x7F7F);              // largest finite
  CHECK(double_to_bf16(std::ldexp(1.0, -126)) == 0x0080);              // smallest normal
  CHECK(double_to_bf16(std::ldexp(1.0, -133)) == 0x0001);              // smallest subnormal
  CHECK(double_to_bf16(std::ldexp(1.0, -134)) == 0x0000);              // tie, 0 is even
  CHECK(double_to_bf16(3 * std::ldexp(1.0, -134)) == 0x0002);          // tie, 2 is even
  CHECK(double_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(double_to_bf16(kInf) == 0x7F80);
  CHECK(double_to_bf16(-kInf) == 0xFF80);
  CHECK(double_to_bf16(kNaN) == 0x7FC0);  // the canonical quiet NaN, as PyTorch writes it
  CHECK(bf16_to_float(0x4049) == 3.140625f);
  CHECK(bf16_to_float(0x0001) == static_cast<float>(std::ldexp(1.0, -133)));
  CHECK(std::isnan(bf16_to_float(0x7FC0)));
  // Widening then narrowing is the identity on every non-NaN value.
  int mismatches = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    if ((bits & 0x7F80) == 0x7F80 && (bits & 0x7F) != 0) continue;
    mismatches += double_to_bf16(bf16_to_float(bits)) != bits;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("BF16 from float agrees with the bit-twiddling rounding PyTorch uses") {
  // PyTorch: bits + 0x7FFF + ((bits >> 16) & 1), top half. An independent formulation.
  std::uint32_t state = 12345;
  int mismatches = 0;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    const float f = std::bit_cast<float>(state);
    if (std::isnan(f)) continue;
    const std::uint32_t rounded = state + 0x7FFFu + ((state >> 16) & 1u);
    mismatches += double_to_bf16(f) != static_cast<std::uint16_t>(rounded >> 16);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("every dtype round-trips through a file, float and double") {
  Matrix<double> values(2, 4);
  // Exactly representable in every dtype (small dyadic rationals), plus a signed zero.
  values << 1.0, -2.5, 0.125, 1024.0, -0.0, 3.75, -65504.0, 6.103515625e-05;
  for (Dtype dtype : {Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16}) {
    CAPTURE(dtype_name(dtype));
    const bool bf16 = dtype == Dtype::BF16;
    Matrix<double> expected = values;
    if (bf16) expected(1, 2) = -65536.0;  // -65504 needs 11 significant bits; bf16 has 8
    SafetensorsWriter w;
    w.add("d", values, dtype);
    w.add("f", values.cast<float>().eval(), dtype);
    const SafetensorsFile file = SafetensorsFile::from_bytes(w.bytes());
    CHECK(file.info("d").dtype == dtype);
    CHECK(file.info("d").shape == Shape{2, 4});
    CHECK(file.matrix<double>("d") == expected);
    CHECK(file.matrix<float>("f") == expected.cast<float>());
    CHECK(std::signbit(file.matrix<double>("d")(1, 0)));
  }
}

TEST_CASE("narrowing writes round to nearest: F32 from double, F16 and BF16 from float") {
  Matrix<double> v(1, 3);
  v << 0.1, 1.0 / 3.0, kInf;
  SafetensorsWriter w;
  w.add("f32", v, Dtype::F32);
  w.add("f16", v, Dtype::F16);
  w.add("bf16", v.cast<float>().eval(), Dtype::BF16);
  w.add_vector("nan", RowVector<float>::Constant(2, std::numeric_limits<float>::quiet_NaN()),
               Dtype::F16);
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  const Matrix<double> f32 = file.matrix<double>("f32");
  CHECK(f32(0, 0) == static_cast<double>(0.1f));
  CHECK(f32(0, 1) == static_cast<double>(1.0f / 3.0f));
  CHECK(f32(0, 2) == kInf);
  const Matrix<double> f16 = file.matrix<double>("f16");
  CHECK(f16(0, 0) == f16_to_double(0x2E66));
  CHECK(f16(0, 1) == 0.333251953125);
  CHECK(f16(0, 2) == kInf);
  CHECK(file.matrix<float>("bf16")(0, 1) == bf16_to_float(0x3EAB));  // 1/3 -> 0.333984375
  CHECK(file.matrix<float>("nan").array().isNaN().all());
}

TEST_CASE("the writer's bytes match a hand-computed layout") {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  RowVector<float> a(2);
  a << 1.0f, -2.0f;
  w.add_vector("a", a, Dtype::F32);
  // JSON is 85 bytes; padded with 3 spaces to 88, a multiple of 8.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 85);
  std::string expected("\x58\0\0\0\0\0\0\0", 8);  // 88, little-endian
  expected += header + "   ";
  expected += std::string("\x00\x00\x80\x3F\x00\x00\x00\xC0", 8);  // 1.0f, -2.0f
  const std::vector<std::byte> bytes = w.bytes();
  CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) == expected);
  CHECK(w.header().size() % 8 == 0);

  TempDir dir;
  w.write(dir.path / "a.safetensors");
  CHECK(read_file(dir.path / "a.safetensors") == expected);
}

TEST_CASE("tensors are laid out widest dtype first so that each can be viewed in place") {
  SafetensorsWriter w;
  w.add("h", Matrix<float>::Ones(1, 3), Dtype::F16);  // 6 bytes: would misalign what follows
  w.add("f", Matrix<float>::Ones(2, 2), Dtype::F32);
  w.add("d", Matrix<double>::Ones(1, 1), Dtype::F64);
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  REQUIRE(file.tensors().size() == 3);
  CHECK(file.tensors()[0].name == "d");
  CHECK(file.tensors()[1].name == "f");
  CHECK(file.tensors()[2].name == "h");
  CHECK(file.tensors()[1].begin == 8);
  CHECK(file.data_offset() % 8 == 0);
  CHECK(file.view<float>("f").sum() == 4.0f);
  CHECK(file.view<double>("d")(0, 0) == 1.0);
  CHECK_THROWS_WITH_AS(file.view<float>("h"), doctest::Contains("use matrix<T>()"), Error);
  CHECK(file.matrix<float>("h").sum() == 3.0f);
}

TEST_CASE("shapes: scalars, vectors, higher ranks, empty tensors and column-major inputs") {
  SafetensorsWriter w;
  w.add("scalar", Matrix<float>::Constant(1, 1, 7.0f), Dtype::F32, Shape{});
  Eigen::MatrixXd col_major(2, 3);  // Eigen's default storage order
  col_major << 1, 2, 3, 4, 5, 6;
  w.add("colmajor", col_major, Dtype::F64);
  w.add("rank3", RowVector<float>::LinSpaced(12, 0, 11), Dtype::F32, Shape{2, 3, 2});
  w.add("empty", Matrix<float>(0, 4), Dtype::F32);
  w.add("empty2", Matrix<float>(3, 0), Dtype::BF16);
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  CHECK(file.info("scalar").shape.empty());
  CHECK(file.matrix<float>("scalar")(0, 0) == 7.0f);
  Matrix<double> expected(2, 3);
  expected << 1, 2, 3, 4, 5, 6;
  CHECK(file.matrix<double>("colmajor") == expected);
  CHECK(file.read_flat<float>("rank3")[7] == 7.0f);
  CHECK_THROWS_WITH_AS(file.matrix<float>("rank3"), doctest::Contains("[2, 3, 2]"), Error);
  CHECK(file.matrix<float>("empty").rows() == 0);
  CHECK(file.matrix<float>("empty").cols() == 4);
  CHECK(file.matrix<float>("empty2").rows() == 3);
  CHECK_THROWS_WITH_AS(file.info("nope"), doctest::Contains("no tensor named 'nope'"), Error);
}

TEST_CASE("the writer refuses what the reader would reject") {
  SafetensorsWriter w;
  w.add("a", Matrix<float>::Ones(1, 1), Dtype::F32);
  CHECK_THROWS_WITH_AS(w.add("a", Matrix<float>::Ones(1, 1), Dtype::F32),
                       doctest::Contains("duplicate tensor name 'a'"), Error);
  CHECK_THROWS_WITH_AS(w.add("", Matrix<float>::Ones(1, 1), Dtype::F32),
                       doctest::Contains("must not be empty"), Error);
  CHECK_THROWS_WITH_AS(w.add("__metadata__", Matrix<float>::Ones(1, 1), Dtype::F32),
                       doctest::Contains("reserved"), Error);
  CHECK_THROWS_WITH_AS(w.add("b", Matrix<float>::Ones(2, 2), Dtype::F32, Shape{3}),
                       doctest::Contains("holds 3 elements"), Error);
  CHECK_THROWS_WITH_AS(w.add_raw("c", Dtype::F16, Shape{2}, std::vector<std::byte>(3)),
                       doctest::Contains("needs 4 bytes, got 3"), Error);
  SafetensorsWriter bad_utf8;
  bad_utf8.add("\xFF\xFE", Matrix<float>::Ones(1, 1), Dtype::F32);
  CHECK_THROWS_WITH_AS(bad_utf8.header(), doctest::Contains("cannot encode the header"), Error);
}

TEST_CASE("metadata and an empty file round-trip") {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "ünïcode \"quoted\"\n");
  w.set_metadata("format", "sora");  // replaces
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  CHECK(file.tensors().empty());
  CHECK(file.metadata().size() == 2);
  CHECK(file.metadata().at("format") == "sora");
  CHECK(file.metadata().at("note") == "ünïcode \"quoted\"\n");
  const auto empty = SafetensorsFile::from_bytes(SafetensorsWriter().bytes());
  CHECK(empty.tensors().empty());
  CHECK(empty.metadata().empty());
}

namespace {
struct Malformed {
  std::string what;
  std::vector<std::byte> bytes;
  const char* error;
};

// F32 entry with the given shape and offsets, as header JSON.
std::string entry(const char* name, const char* shape, const char* offsets,
                  const char* dtype = "F32") {
  return std::string("\"") + name + R"(":{"dtype":")" + dtype + R"(","shape":)" + shape +
         R"(,"data_offsets":)" + offsets + "}";
}
std::string header(const std::string& entries) {
  return "{" + entries + "}";
}
}  // namespace

TEST_CASE("the reader rejects every malformed file with an error that says what is wrong") {
  const std::string a4 = entry("a", "[1]", "[0,4]");
  std::string rank65 = "[1";
  for (int i = 0; i < 64; ++i) rank65 += ",1";
  rank65 += "]";
  const std::vector<Malformed> table = {
      {"empty file", {}, "file is 0 bytes, too short"},
      {"7 bytes", std::vector<std::byte>(7), "file is 7 bytes, too short"},
      {"header length over 100 MB", raw_file(100'000'001, "{}", 0), "exceeds the limit"},
      {"header length 2^63", raw_file(std::uint64_t{1} << 63, "{}", 0), "exceeds the limit"},
      {"header length past the end", raw_file(64, "{}", 10), "runs past the end of the file"},
      {"header length 0", raw_file(0, "", 0), "not valid JSON"},
      {"header is an array", raw_file("[]", 0), "not a JSON object (found an array)"},
      {"header is a string", raw_file("\"x\"", 0), "not a JSON object (found a string)"},
      {"header is a number", raw_file("17", 0), "not a JSON object (found a number)"},
      {"truncated JSON", raw_file("{\"a\":", 0), "not valid JSON"},
      {"trailing garbage", raw_file("{} x", 0), "not valid JSON"},
      {"invalid UTF-8", raw_file("{\"\xFF\":{}}", 0), "not valid JSON"},
      {"NUL padding", raw_file(std::string("{}\0\0", 4), 0), "contains a NUL byte"},
      {"content after a NUL", raw_file(std::string("{}\0{\"a\":1}", 10), 0), "contains a NUL byte"},
      {"entry is a number", raw_file("{\"a\":1}", 0),
       "entry 'a' must be an object (found a number)"},
      {"entry is null", raw_file("{\"a\":null}", 0), "entry 'a' must be an object (found null)"},
      {"missing dtype", raw_file(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': missing field 'dtype'"},
      {"missing shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4),
       "tensor 'a': missing field 'shape'"},
      {"missing data_offsets", raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4),
       "tensor 'a': missing field 'data_offsets'"},
      {"dtype is a number", raw_file(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': dtype must be a string (found a number)"},
      {"dtype is an object", raw_file(R"({"a":{"dtype":{"x":1}}})", 4),
       "tensor 'a': dtype must be a string (found an object)"},
      {"unknown dtype", raw_file(header(entry("a", "[1]", "[0,4]", "F42")), 4),
       "tensor 'a': unknown dtype 'F42'"},
      {"unsupported dtype", raw_file(header(entry("a", "[1]", "[0,8]", "U64")), 8),
       "tensor 'a': unsupported dtype 'U64'"},
      {"shape is a number", raw_file(header(entry("a", "3", "[0,12]")), 12),
       "tensor 'a': shape must be an array of integers (found a number)"},
      {"negative dimension", raw_file(header(entry("a", "[-1]", "[0,4]")), 4),
       "tensor 'a': shape contains the negative number -1"},
      {"fractional dimension", raw_file(header(entry("a", "[1.5]", "[0,4]")), 4),
       "tensor 'a': shape contains 1.5, not an integer"},
      {"string dimension", raw_file(header(entry("a", "[\"2\"]", "[0,8]")), 8),
       "tensor 'a': shape must contain integers only (found a string)"},
      {"nested shape", raw_file(header(entry("a", "[[2]]", "[0,8]")), 8),
       "tensor 'a': shape must contain integers only (found an array)"},
      {"dimension beyond int64", raw_file(header(entry("a", "[18446744073709551615]", "[0,4]")), 4),
       "beyond int64"},
      {"dimension beyond uint64",
       raw_file(header(entry("a", "[18446744073709551616]", "[0,4]")), 4), "not an integer"},
      {"65 dimensions", raw_file(header(entry("a", rank65.c_str(), "[0,4]")), 4),
       "more than 64 dimensions"},
      {"element count overflows",
       raw_file(header(entry("a", "[4294967296,4294967296,4]", "[0,4]")), 4), "overflows 64 bits"},
      {"byte count overflows", raw_file(header(entry("a", "[4611686018427387904]", "[0,4]")), 4),
       "overflows 64 bits in bytes"},
      {"shape / byte count mismatch", raw_file(header(entry("a", "[3]", "[0,8]")), 8),
       "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"},
      {"F16 shape / byte count mismatch",
       raw_file(header(entry("a", "[2,2]", "[0,16]", "F16")), 16), "needs 8 bytes"},
      {"one offset", raw_file(header(entry("a", "[1]", "[0]")), 4),
       "data_offsets must hold 2 integers, not 1"},
      {"three offsets", raw_file(header(entry("a", "[1]", "[0,4,8]")), 8),
       "data_offsets must hold 2 integers, not more"},
      {"offsets as an object", raw_file(header(entry("a", "[1]", "{}")), 4),
       "tensor 'a': data_offsets must be an array of integers (found an object)"},
      {"reversed offsets", raw_file(header(entry("a", "[0]", "[8,4]")), 8),
       "end before they begin"},
      {"past the end", raw_file(header(entry("a", "[2]", "[0,8]")), 4),
       "run past the end of the data section (4 bytes)"},
      {"far past the end",
       raw_file(header(entry("a", "[1]", "[18446744073709551608,18446744073709551612]")), 4),
       "run past the end of the data section"},
      {"overlap",
       raw_file(header(entry("a", "[2]", "[0,8]") + "," + entry("b", "[2]", "[4,12]")), 12),
       "tensors 'a' and 'b' overlap"},
      {"same offsets",
       raw_file(header(entry("a", "[1]", "[0,4]") + "," + entry("b", "[1]", "[0,4]")), 4),
       "overlap"},
      {"hole", raw_file(header(entry("a", "[1]", "[0,4]") + "," + entry("b", "[1]", "[8,12]")), 12),
       "bytes [4, 8) of the data section belong to no tensor"},
      {"hole at the start", raw_file(header(entry("a", "[1]", "[4,8]")), 8),
       "bytes [0, 4) of the data section belong to no tensor"},
      {"trailing bytes", raw_file(header(a4), 8),
       "the last 4 bytes of the data section belong to no tensor"},
      {"data without tensors", raw_file("{}", 1), "the last 1 bytes"},
      {"duplicate names", raw_file(header(a4 + "," + entry("a", "[1]", "[4,8]")), 8),
       "duplicate entry 'a'"},
      {"empty name", raw_file(header(entry("", "[1]", "[0,4]")), 4), "a tensor name is empty"},
      {"duplicate field",
       raw_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': duplicate field 'dtype'"},
      {"unknown field",
       raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4),
       "tensor 'a': unknown field 'x'"},
      {"metadata not an object", raw_file(R"({"__metadata__":"x"})", 0),
       "__metadata__ must be an object of strings (found a string)"},
      {"metadata value a number", raw_file(R"({"__metadata__":{"k":1}})", 0),
       "metadata value of 'k' must be a string (found a number)"},
      {"metadata value an object", raw_file(R"({"__metadata__":{"k":{}}})", 0),
       "metadata value of 'k' must be a string (found an object)"},
      {"duplicate metadata key", raw_file(R"({"__metadata__":{"k":"a","k":"b"}})", 0),
       "duplicate metadata key 'k'"},
      {"duplicate metadata", raw_file(R"({"__metadata__":{},"__metadata__":{}})", 0),
       "duplicate entry '__metadata__'"},
  };
  for (const Malformed& m : table) {
    CAPTURE(m.what);
    const std::string error = error_of(m.bytes);
    CHECK_MESSAGE(error.find(m.error) != std::string::npos, "got: ", error);
    CHECK(error.rfind("bad.safetensors: ", 0) == 0);
  }
}

TEST_CASE("hand-made valid files are accepted: padding, zero-size tensors, any key order") {
  const auto file = SafetensorsFile::from_bytes(raw_file(
      R"(  {"b":{"data_offsets":[4,8],"shape":[1],"dtype":"F32"},"z":{"dtype":"BF16","shape":[0,3],"data_offsets":[4,4]},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}   )",
      8));
  REQUIRE(file.tensors().size() == 3);
  CHECK(file.tensors()[0].name == "a");  // data order
  CHECK(file.tensors()[1].name == "z");
  CHECK(file.tensors()[2].name == "b");
  CHECK(file.matrix<float>("z").size() == 0);
}

TEST_CASE("atomic writes: a failed write leaves the earlier file intact and no temporary") {
  TempDir dir;
  const fs::path target = dir.path / "model.safetensors";
  SafetensorsWriter first;
  first.add("w", Matrix<float>::Constant(2, 2, 1.0f), Dtype::F32);
  first.write(target);
  const std::string before = read_file(target);

  SUBCASE("the writer is abandoned half-way (an injected failure)") {
    try {
      AtomicFileWriter out(target);
      out.write("partial garbage");
      CHECK(fs::exists(out.temporary_path()));
      CHECK(out.temporary_path().parent_path() == dir.path);
      throw std::runtime_error("injected failure");
    } catch (const std::runtime_error&) {
    }
  }
  SUBCASE("the header cannot be encoded") {
    SafetensorsWriter bad;
    bad.add("\xC3", Matrix<float>::Zero(1, 1), Dtype::F32);
    CHECK_THROWS_AS(bad.write(target), Error);
  }
  SUBCASE("the target is a directory, so the rename fails") {
    fs::create_directory(dir.path / "sub");
    CHECK_THROWS_WITH_AS(first.write(dir.path / "sub"), doctest::Contains("cannot rename"), Error);
    fs::remove(dir.path / "sub");
  }
  SUBCASE("the directory does not exist") {
    CHECK_THROWS_WITH_AS(first.write(dir.path / "missing" / "x.safetensors"),
                         doctest::Contains("cannot create a temporary file"), Error);
  }
  CHECK(read_file(target) == before);
  CHECK(files_in(dir.path) == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("atomic writes replace the file in one step") {
  TempDir dir;
  const fs::path target = dir.path / "notes.txt";
  write_file_atomic(target, "first");
  write_file_atomic(target, "second, longer");
  CHECK(read_file(target) == "second, longer");
  CHECK(files_in(dir.path) == std::vector<std::string>{"notes.txt"});
  CHECK((fs::status(target).permissions() & fs::perms::owner_read) != fs::perms::none);
}

TEST_CASE("memory-mapped reading: views into the file, kept alive by copies") {
  TempDir dir;
  const fs::path path = dir.path / "big.safetensors";
  const Index R = 513, C = 1031;  // ~2 MB of F32
  Rng rng(17);  // not Matrix::Random: std::rand is global state shared with everything else
  Matrix<float> w(R, C), h(3, 5);
  rng.fill_uniform(w, -1.0, 1.0);
  rng.fill_uniform(h, -1.0, 1.0);
  SafetensorsWriter writer;
  writer.add("w", w, Dtype::F32);
  writer.add("h", h, Dtype::F16);
  writer.write(path);

  std::optional<SafetensorsFile> copy;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    CHECK(file.source() == path.string());
    CHECK(file.file_size() == fs::file_size(path));
    CHECK(file.viewable<float>(file.info("w")));
    copy = file;
  }
  // The first object is gone; the copy still owns the mapping.
  const ConstMatrixMap<float> view = copy->view<float>("w");
  CHECK(view == w);
  CHECK(copy->matrix<float>("w") == w);
  CHECK((copy->matrix<float>("h") - h).cwiseAbs().maxCoeff() < 1e-3f);

  // Replacing the file (atomically, as sora always does) leaves the mapping on the old bytes.
  SafetensorsWriter other;
  other.add("w", Matrix<float>::Zero(R, C), Dtype::F32);
  other.write(path);
  CHECK(view == w);
  CHECK(SafetensorsFile::open(path).view<float>("w").isZero());

  CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path / "none.safetensors"),
                       doctest::Contains("cannot open"), Error);
  CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path), doctest::Contains("not a regular file"),
                       Error);
  std::ofstream(dir.path / "short.safetensors") << "abc";
  CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.path / "short.safetensors"),
                       doctest::Contains("short.safetensors: file is 3 bytes"), Error);
}

TEST_CASE("loading by name lists every missing, unexpected and misshapen tensor") {
  SafetensorsWriter w;
  w.add("a", Matrix<float>::Constant(2, 3, 1.0f), Dtype::F32);
  w.add_vector("b", RowVector<float>::Constant(3, 2.0f), Dtype::BF16);
  w.add("c", Matrix<float>::Constant(2, 2, 3.0f), Dtype::F16);
  w.add("extra.one", Matrix<float>::Zero(1, 1), Dtype::F32);
  w.add_vector("extra.two", RowVector<float>::Zero(4), Dtype::F32);
  const auto file = SafetensorsFile::from_bytes(w.bytes(), "weights.safetensors");

  Matrix<float> a = Matrix<float>::Zero(2, 3), b = Matrix<float>::Zero(1, 3);
  Matrix<float> c = Matrix<float>::Zero(3, 2), d = Matrix<float>::Zero(4, 4);
  Matrix<float> b_as_matrix = Matrix<float>::Zero(1, 3);
  const std::vector<TensorSlot<float>> slots = {
      {"a", &a, false}, {"b", &b, true}, {"c", &c, false}, {"d", &d, false}};
  try {
    load_into(file, slots);
    FAIL("load_into accepted a mismatched file");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("weights.safetensors: cannot load 4 tensors (4 problems):") == 0);
    CHECK(msg.find("\n  tensor 'c' has shape [2, 2], expected [3, 2]") != std::string::npos);
    CHECK(msg.find("\n  missing tensor 'd' (expected [4, 4])") != std::string::npos);
    CHECK(msg.find("\n  unexpected tensor 'extra.one' [1, 1] F32") != std::string::npos);
    CHECK(msg.find("\n  unexpected tensor 'extra.two' [4] F32") != std::string::npos);
  }
  CHECK(a.isZero());  // nothing is touched unless everything fits

  // A vector stored 1-D does not match a (1, n) matrix slot, and vice versa.
  CHECK_THROWS_WITH_AS(load_into(file, std::vector<TensorSlot<float>>{{"b", &b_as_matrix, false}},
                                 {.allow_unexpected = true}),
                       doctest::Contains("tensor 'b' has shape [3], expected [1, 3]"), Error);
  CHECK_THROWS_WITH_AS(
      load_into(file, std::vector<TensorSlot<float>>{{"a", &a, false}, {"a", &a, false}},
                {.allow_unexpected = true}),
      doctest::Contains("slot 'a' is listed twice"), Error);

  Matrix<float> c_ok = Matrix<float>::Zero(2, 2);
  const LoadReport report =
      load_into(file,
                std::vector<TensorSlot<float>>{
                    {"a", &a, false}, {"b", &b, true}, {"c", &c_ok, false}, {"d", &d, false}},
                {.allow_unexpected = true, .allow_missing = true});
  CHECK(report.loaded == std::vector<std::string>{"a", "b", "c"});
  CHECK(report.missing == std::vector<std::string>{"d"});
  CHECK(report.unexpected == std::vector<std::string>{"extra.one", "extra.two"});
  CHECK(a == Matrix<float>::Constant(2, 3, 1.0f));
  CHECK(b == Matrix<float>::Constant(1, 3, 2.0f));
  CHECK(c_ok == Matrix<float>::Constant(2, 2, 3.0f));
  CHECK(d.isZero());
}

TEST_CASE("parameters save and load through a visitor; vectors are 1-D in the file") {
  Rng rng(19);
  const auto uniform = [&](Index rows, Index cols) {
    Matrix<double> m(rows, cols);
    rng.fill_uniform(m, -1.0, 1.0);
    return m;
  };
  std::vector<Param<double>> params;
  params.emplace_back("blocks.0.attn.q.weight", uniform(4, 3), false);
  params.emplace_back("blocks.0.attn.q.bias", uniform(1, 4), false, true);
  params.emplace_back("blocks.0.attn.q.lora_gate", uniform(1, 2), true, true);
  const auto visit = [&](auto&& f) {
    for (Param<double>& p : params) f(p);
  };
  TempDir dir;
  const fs::path path = dir.path / "params.safetensors";
  save_tensors(path, slots_of<double>(visit), Dtype::F64, {{"step", "7"}});

  const SafetensorsFile file = SafetensorsFile::open(path);
  CHECK(file.metadata().at("step") == "7");
  CHECK(file.info("blocks.0.attn.q.weight").shape == Shape{4, 3});
  CHECK(file.info("blocks.0.attn.q.bias").shape == Shape{4});
  CHECK(file.info("blocks.0.attn.q.lora_gate").shape == Shape{2});

  std::vector<Param<double>> fresh;
  for (const Param<double>& p : params) {
    fresh.emplace_back(p.name, Matrix<double>::Zero(p.value.rows(), p.value.cols()), p.trainable(),
                       p.is_vector);
  }
  const auto visit_fresh = [&](auto&& f) {
    for (Param<double>& p : fresh) f(p);
  };
  const LoadReport report = load_into(file, slots_of<double>(visit_fresh));
  CHECK(report.loaded.size() == 3);
  for (std::size_t i = 0; i < params.size(); ++i) CHECK(fresh[i].value == params[i].value);

  SafetensorsWriter w;
  w.add(params[1], Dtype::F32);
  CHECK(SafetensorsFile::from_bytes(w.bytes()).info("blocks.0.attn.q.bias").shape == Shape{4});
}

TEST_CASE("integer tensors (a checkpoint's position_ids) are listed but never read as weights") {
  const auto file = SafetensorsFile::from_bytes(
      raw_file(
          R"({"ids":{"dtype":"I64","shape":[1,3],"data_offsets":[0,24]},"w":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}})",
          32),
      "ckpt.safetensors");
  REQUIRE(file.tensors().size() == 2);
  CHECK(file.info("ids").dtype == Dtype::I64);
  CHECK(file.info("ids").nbytes() == 24);
  CHECK(file.matrix<float>("w").size() == 2);
  std::string message;
  try {
    file.matrix<float>("ids");
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message == "ckpt.safetensors: tensor 'ids' is I64 (integers), not floating-point values");
  // Their layout is checked like any tensor's: an I32 [1] is 4 bytes.
  CHECK(error_of(raw_file(header(entry("a", "[1]", "[0,8]", "I32")), 8)).find("needs 4 bytes") !=
        std::string::npos);
}
