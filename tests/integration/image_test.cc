// The container image as it is run: podman builds it from the Dockerfile
// (`podman build --isolation chroot`, on debian:bookworm bases made locally
// by scripts/container-base.sh) with the Debian package of this build, and
// its root filesystem then runs outboxd as the image's user with only a
// mounted configuration, against the suite's PostgreSQL and Kafka: events
// arrive, /healthz answers 200, SIGTERM stops it with exit 0. Containers
// cannot be started on the CI machines (cgroups, rlimits), so the image's
// root filesystem (`podman image mount`) is run with
// `chroot --userspec=UID:GID`, in the host's network.
//
// Needs root and podman (scripts/install-deps.sh); skipped with a message
// where either is missing. A sanitized build is not packaged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/integration/metrics_support.h"
#include "tests/integration/relay_test_support.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;

std::string LastLine(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text.substr(text.rfind('\n') + 1);
}

// What the test made on the host, undone in reverse whatever happens.
struct Cleanup {
  std::vector<std::vector<std::string>> commands;
  ~Cleanup() {
    for (auto it = commands.rbegin(); it != commands.rend(); ++it) (void)RunCommand(*it, 60s);
  }
};

TEST(ImageTest, RunsAsItsUserWithOnlyAMountedConfigRelaysAndStopsOnSigterm) {
#ifdef OUTBOXD_SANITIZED
  GTEST_SKIP() << "a sanitized build is not packaged";
#endif
  if (geteuid() != 0) GTEST_SKIP() << "podman build, mount and chroot need root (CI runs the suite as root)";
  if (access("/usr/bin/podman", X_OK) != 0) {
    GTEST_SKIP() << "podman is not installed (scripts/install-deps.sh installs it)";
  }
  const std::string source = OUTBOXD_SOURCE_DIR;
  const CommandResult package = RunCommand({"bash", source + "/scripts/package.sh", OUTBOXD_BUILD_DIR}, 600s);
  ASSERT_EQ(0, package.exit_code) << package.output;
  const CommandResult base = RunCommand({"bash", source + "/scripts/container-base.sh"}, 900s);
  ASSERT_EQ(0, base.exit_code) << base.output;

  Cleanup cleanup;
  char dir_template[] = "/tmp/outboxd-image-test.XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir_template));
  const std::string dir = dir_template;
  cleanup.commands.push_back({"rm", "-rf", dir});
  const std::string context = dir + "/context";
  std::filesystem::create_directories(context);
  std::filesystem::copy_file(LastLine(package.output), context + "/outboxd_test_amd64.deb");

  const std::string tag = "localhost/outboxd:image-test-" + std::to_string(getpid());
  const CommandResult built =
      RunCommand({"podman", "build", "--isolation", "chroot", "--format", "docker", "--pull=never", "--build-arg",
                  "PACKAGE_STAGE=prebuilt", "-t", tag, "-f", source + "/Dockerfile", context},
                 900s);
  ASSERT_EQ(0, built.exit_code) << built.output;
  cleanup.commands.push_back({"podman", "image", "prune", "--force"});  // the unnamed stage images
  cleanup.commands.push_back({"podman", "rmi", "--force", tag});

  // Lean: what the Dockerfile adds to its base.
  auto size = [](const std::string& image) {
    return std::stoll(LastLine(RunCommand({"podman", "image", "inspect", "--format", "{{.Size}}", image}, 60s).output));
  };
  const long long base_bytes = size("debian:bookworm-slim");
  const long long image_bytes = size(tag);
  std::cout << "[ stats    ] base " << base_bytes / 1000000 << " MB, image " << image_bytes / 1000000 << " MB, added "
            << (image_bytes - base_bytes) / 1000000 << " MB\n";
  EXPECT_LE(image_bytes - base_bytes, 50'000'000) << "the Dockerfile adds more than 50 MB to its base";
  const nlohmann::json config = nlohmann::json::parse(
      LastLine(RunCommand({"podman", "image", "inspect", "--format", "{{json .Config}}", tag}, 60s).output));
  EXPECT_EQ("10001:10001", config.value("User", ""));
  const nlohmann::json health = nlohmann::json::parse(
      LastLine(RunCommand({"podman", "image", "inspect", "--format", "{{json .HealthCheck}}", tag}, 60s).output));
  EXPECT_TRUE(health.is_object() && health.contains("Test")) << health.dump();
  EXPECT_EQ("outboxd", config["Labels"].value("org.opencontainers.image.title", ""));
  EXPECT_EQ("0.1.0", config["Labels"].value("org.opencontainers.image.version", ""));

  const CommandResult mounted = RunCommand({"podman", "image", "mount", tag}, 60s);
  ASSERT_EQ(0, mounted.exit_code) << mounted.output;
  const std::string root = LastLine(mounted.output);
  cleanup.commands.push_back({"podman", "image", "unmount", tag});

  // The user's configuration, mounted over the image's unconfigured one.
  TestDatabase db;
  db.Exec(OutboxDdl("outbox"));
  const std::string type = UniqueTopic("image");
  const int http_port = FreePort();
  const std::string toml = "[postgres]\nconninfo = \"" + db.conninfo() + "\"\n[kafka]\nbootstrap_servers = \"" +
                           SharedServices().kafka_bootstrap +
                           "\"\n[http]\nlisten = \"127.0.0.1:" + std::to_string(http_port) +
                           "\"\n[[outbox]]\ntable = \"public.outbox\"\npoll_interval = "
                           "\"100ms\"\n";
  const std::string config_file = dir + "/outboxd.toml";
  std::ofstream(config_file) << toml;
  ASSERT_EQ(0, chmod(config_file.c_str(), 0644));
  const CommandResult bind = RunCommand({"mount", "--bind", config_file, root + "/etc/outboxd/outboxd.toml"}, 30s);
  ASSERT_EQ(0, bind.exit_code) << bind.output;
  cleanup.commands.push_back({"umount", root + "/etc/outboxd/outboxd.toml"});

  // The image's command, as its user, in its root filesystem.
  const std::string runner = dir + "/run-image.sh";
  std::ofstream(runner) << "#!/bin/sh\nexec chroot --userspec=10001:10001 " << root
                        << " /usr/bin/outboxd run -c /etc/outboxd/outboxd.toml\n";
  ASSERT_EQ(0, chmod(runner.c_str(), 0755));
  ASSERT_EQ(0, setenv("OUTBOXD_BINARY", runner.c_str(), 1));
  OutboxdProcess outboxd(toml);
  outboxd.Start();
  ASSERT_EQ(0, unsetenv("OUTBOXD_BINARY"));

  ASSERT_TRUE(outboxd.WaitForLog("relaying \"public.outbox\"", 60s)) << outboxd.Log();
  for (int i = 0; i < 3; ++i) {
    db.Exec("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('" + type + "', 'k" +
            std::to_string(i) + "', 'Created', '{\"n\": " + std::to_string(i) + "}')");
  }
  const auto records = ConsumeTopic(SharedServices().kafka_bootstrap, "outbox.event." + type, 3, 60s);
  EXPECT_EQ(3u, records.size()) << outboxd.Log();
  EXPECT_EQ(200, Get(http_port, "/healthz").status) << outboxd.Log();
  // It runs as the image's user.
  const std::string status = RunCommand({"cat", "/proc/" + std::to_string(outboxd.pid()) + "/status"}, 10s).output;
  EXPECT_NE(std::string::npos, status.find("\nUid:\t10001\t")) << status;

  outboxd.Terminate();
  EXPECT_EQ(0, outboxd.WaitExit(30s)) << outboxd.Log();
}

}  // namespace
}  // namespace outboxd::testing
