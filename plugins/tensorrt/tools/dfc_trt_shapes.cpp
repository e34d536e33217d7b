// dfc_trt_shapes: output dims of the exchange operators, computed by the same shape functions
// the TensorRT plugins use (src/host.cpp), so a test on the Rust side can compare them with the
// Rust contract on every plan.
//
// stdin, one request a line (blank lines and lines starting with '#' are skipped):
//   halo <slot> <axis> <top> <bottom> | d0 d1 d2 ...
//   gather <slot> <axis> <p0,p1,...> | d0 d1 ...
//   stats <slot> | d0 d1 ...
// stdout, one line per request: the output dims separated by spaces, or `error: <reason>`.
// Exit status: 0 when every request had an answer, 1 when any line was an error.
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "host.h"

namespace {

bool parseInt(std::string const& s, int64_t& v) {
    if (s.empty()) return false;
    size_t used = 0;
    try {
        v = std::stoll(s, &used);
    } catch (...) {
        return false;
    }
    return used == s.size();
}

std::string answer(std::string const& line) {
    size_t bar = line.find('|');
    if (bar == std::string::npos) return "error: expected `<op> <attrs> | <dims>`";
    std::istringstream head(line.substr(0, bar)), tail(line.substr(bar + 1));
    std::string op;
    head >> op;
    std::vector<std::string> args;
    for (std::string t; head >> t;) args.push_back(t);
    dfc::OpAttrs a;
    std::vector<int64_t> v(args.size());
    auto ints = [&](size_t want) {
        if (args.size() != want) return false;
        for (size_t i = 0; i < want; ++i)
            if (!parseInt(args[i], v[i])) return false;
        return true;
    };
    if (op == "halo") {
        if (!ints(4)) return "error: halo needs <slot> <axis> <top> <bottom>";
        a.kind = dfc::OpKind::Halo;
        a.slot = v[0], a.axis = v[1], a.top = v[2], a.bottom = v[3];
    } else if (op == "gather") {
        if (args.size() != 3 || !parseInt(args[0], v[0]) || !parseInt(args[1], v[1]))
            return "error: gather needs <slot> <axis> <p0,p1,...>";
        a.kind = dfc::OpKind::Gather;
        a.slot = v[0], a.axis = v[1];
        std::istringstream ps(args[2]);
        for (std::string p; std::getline(ps, p, ',');) {
            int64_t x = 0;
            if (!parseInt(p, x)) return "error: bad part `" + p + "`";
            a.parts.push_back(x);
        }
    } else if (op == "stats") {
        if (!ints(1)) return "error: stats needs <slot>";
        a.kind = dfc::OpKind::Stats;
        a.slot = v[0];
    } else {
        return "error: unknown operator `" + op + "`";
    }
    std::vector<int64_t> in, out;
    for (std::string t; tail >> t;) {
        int64_t d = 0;
        if (!parseInt(t, d)) return "error: bad dim `" + t + "`";
        in.push_back(d);
    }
    std::string err = dfc::outputShape(a, in, out);
    if (!err.empty()) return "error: " + err;
    std::ostringstream os;
    for (size_t i = 0; i < out.size(); ++i) os << (i ? " " : "") << out[i];
    return os.str();
}

}  // namespace

int main() {
    int status = 0;
    for (std::string line; std::getline(std::cin, line);) {
        size_t first = line.find_first_not_of(" \t\r");
        if (first == std::string::npos || line[first] == '#') continue;
        std::string out = answer(line);
        if (out.rfind("error:", 0) == 0) status = 1;
        std::cout << out << '\n';
    }
    return status;
}
