"""python -m fastwn <command>: bench (the side-by-side benchmark) or info."""
import json
import sys


def main() -> int:
    commands = {"bench": "side-by-side benchmark against torch._weight_norm (--models: whole models)",
                "demo": "weight norm vs batch norm vs plain on scikit-learn's digits", "info": "what this build contains"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m fastwn {" + ",".join(commands) + "} [options]")
        for name, text in commands.items():
            print(f"  {name:<6} {text}")
        return 2
    cmd = sys.argv[1]
    if cmd == "bench":
        from . import bench

        return bench.main(sys.argv[2:])
    if cmd == "demo":
        from . import demo

        return demo.main(sys.argv[2:])
    import fastwn

    print(json.dumps({**fastwn.build_info(), "cpu_isa": fastwn.cpu_isa() if fastwn.HAS_EXTENSION else None}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
