// deploy/: the Kubernetes sidecar example and the compose try-out parse as
// YAML (PyYAML, Debian's python3-yaml), hold what they say they hold, and the
// outboxd configuration in each passes `outboxd check-config` of the built
// binary. Their password files are mounted secrets; the check reads a copy
// in a temporary directory instead.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "tests/harness/test_env.h"

namespace outboxd::testing {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

const std::string kDeploy = std::string(OUTBOXD_SOURCE_DIR) + "/deploy";

// Every document of a YAML file, as JSON.
Json LoadYaml(const std::string& path) {
  const CommandResult r = RunCommand({"python3", "-c",
                                      "import json, sys, yaml\n"
                                      "print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
                                      path},
                                     60s);
  if (r.exit_code != 0) throw HarnessError("cannot parse " + path + " as YAML:\n" + r.output);
  return Json::parse(r.output);
}

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// check-config on `toml`, with `secret_dir` (where the config expects its
// mounted secrets) pointing at a temporary directory holding `secrets`.
CommandResult CheckConfig(const std::string& toml, const std::string& secret_dir,
                          const std::map<std::string, std::string>& secrets) {
  char dir_template[] = "/tmp/outboxd-deploy-test.XXXXXX";
  if (mkdtemp(dir_template) == nullptr) throw HarnessError("mkdtemp failed");
  const std::string dir = dir_template;
  for (const auto& [name, value] : secrets) {
    std::ofstream(dir + "/" + name) << value;
    chmod((dir + "/" + name).c_str(), 0600);
  }
  std::ofstream(dir + "/outboxd.toml") << Replace(toml, secret_dir, dir + "/");
  CommandResult r = OutboxdProcess::RunCommand({"check-config", "-c", dir + "/outboxd.toml"});
  (void)RunCommand({"rm", "-rf", dir}, 10s);
  return r;
}

const Json* Find(const Json& docs, const std::string& kind) {
  for (const Json& d : docs) {
    if (d.is_object() && d.value("kind", "") == kind) return &d;
  }
  return nullptr;
}

TEST(DeployTest, TheKubernetesSidecarHasProbesMetricsAndAValidConfig) {
  const Json docs = LoadYaml(kDeploy + "/kubernetes/orders-with-outboxd.yaml");
  const Json* config_map = Find(docs, "ConfigMap");
  const Json* secret = Find(docs, "Secret");
  const Json* deployment = Find(docs, "Deployment");
  ASSERT_TRUE(config_map && secret && deployment) << docs.dump(1);

  const std::string toml = (*config_map)["data"].value("outboxd.toml", "");
  const CommandResult check = CheckConfig(toml, "/var/run/secrets/outboxd/",
                                          {{"pg-password", (*secret)["stringData"].value("pg-password", "")}});
  EXPECT_EQ(0, check.exit_code) << check.output << "\n" << toml;
  EXPECT_NE(std::string::npos, toml.find("listen = \"0.0.0.0:9464\"")) << toml;

  const Json& pod = (*deployment)["spec"]["template"];
  const Json& annotations = pod["metadata"]["annotations"];
  EXPECT_EQ("true", annotations.value("prometheus.io/scrape", ""));
  EXPECT_EQ("9464", annotations.value("prometheus.io/port", ""));
  EXPECT_EQ("/metrics", annotations.value("prometheus.io/path", ""));
  const Json& containers = pod["spec"]["containers"];
  ASSERT_EQ(2u, containers.size()) << "the application and its outboxd sidecar";
  const Json* outboxd = nullptr;
  for (const Json& c : containers) {
    if (c.value("name", "") == "outboxd") outboxd = &c;
  }
  ASSERT_NE(nullptr, outboxd);
  EXPECT_EQ("/healthz", (*outboxd)["livenessProbe"]["httpGet"].value("path", ""));
  EXPECT_EQ("/readyz", (*outboxd)["readinessProbe"]["httpGet"].value("path", ""));
  EXPECT_EQ(9464, (*outboxd)["ports"][0].value("containerPort", 0));
  EXPECT_EQ(10001, (*outboxd)["securityContext"].value("runAsUser", 0)) << "the image's user";
  EXPECT_FALSE((*outboxd)["resources"]["requests"].value("memory", "").empty());
  bool config_mounted = false;
  bool secret_mounted = false;
  for (const Json& m : (*outboxd)["volumeMounts"]) {
    config_mounted |= m.value("mountPath", "") == "/etc/outboxd/outboxd.toml";
    secret_mounted |= m.value("mountPath", "") == "/var/run/secrets/outboxd";
  }
  EXPECT_TRUE(config_mounted && secret_mounted) << (*outboxd)["volumeMounts"].dump();
  EXPECT_EQ(0440, pod["spec"]["volumes"][1]["secret"].value("defaultMode", 0));
  EXPECT_EQ(10001, pod["spec"]["securityContext"].value("fsGroup", 0)) << "so that user 10001 reads the secret";
}

TEST(DeployTest, TheComposeTryOutRunsOutboxdWithAValidConfig) {
  const Json compose = LoadYaml(kDeploy + "/compose/compose.yaml").at(0);
  const Json& services = compose["services"];
  for (const char* service : {"postgres", "kafka", "outboxd"}) EXPECT_TRUE(services.contains(service)) << service;
  const Json& outboxd = services["outboxd"];
  EXPECT_EQ("../..", outboxd["build"].value("context", ""));
  const Json& volumes = outboxd["volumes"];
  EXPECT_NE(volumes.end(), std::find(volumes.begin(), volumes.end(), "./outboxd.toml:/etc/outboxd/outboxd.toml:ro"))
      << volumes.dump();
  const CommandResult check = CheckConfig(ReadTextFile(kDeploy + "/compose/outboxd.toml"), "/run/secrets/",
                                          {{"pg-password", ReadTextFile(kDeploy + "/compose/pg-password")}});
  EXPECT_EQ(0, check.exit_code) << check.output;
  // The password outboxd reads is the one PostgreSQL is started with.
  std::string password = ReadTextFile(kDeploy + "/compose/pg-password");
  while (!password.empty() && password.back() == '\n') password.pop_back();
  EXPECT_EQ(password, services["postgres"]["environment"].value("POSTGRES_PASSWORD", ""));
  EXPECT_NE(std::string::npos, services["postgres"]["command"].dump().find("wal_level=logical"));
}

}  // namespace
}  // namespace outboxd::testing
